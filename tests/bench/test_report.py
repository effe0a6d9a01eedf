"""The system benchmark's arithmetic and report, on figures made up for the test (the
benchmark itself runs with `edgefn bench`, not in the test run)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.report import write
from bench.system import DASHBOARD_HIT_MISS, MIX, PEAK_FACTOR, TARGET_UTILISATION, Step, capacity, sustained


def step(rate: float, p99: float, cpu: float, non_2xx: int = 0, errors: int = 0, late: int = 0) -> dict[str, Any]:
    summary = {"requests": int(rate * 2), "rps": rate, "p50_ms": p99 / 3, "p95_ms": p99 / 1.5, "p99_ms": p99,
               "mean_ms": p99 / 3, "errors": errors, "non_2xx": non_2xx}
    return {"rate": rate, "summary": summary, "cpu_ms": cpu, "late": late, "statuses": {"200": int(rate * 2) - non_2xx}}


def test_sustained_is_the_fastest_clean_step_under_the_p99_goal() -> None:
    steps = [Step(**step(100, 10, 2.0)), Step(**step(200, 20, 2.0, non_2xx=1)), Step(**step(400, 40, 2.0)),
             Step(**step(800, 120, 2.0))]
    best = sustained(steps)
    assert best is not None and best.rate == 400  # 200 had a non-2xx, 800 missed the p99 goal
    assert sustained([Step(**step(100, 60, 2.0))]) is None


def test_capacity_follows_from_cpu_per_request() -> None:
    ladders = {k: [step(100, 10, 2.0), step(200, 20, 2.0)] for k in MIX if k != "dashboard"}
    ladders["dashboard_hit"] = [step(100, 5, 1.0), step(200, 6, 1.0)]
    ladders["dashboard_miss"] = [step(100, 9, 3.0), step(200, 12, 3.0)]
    cap = capacity({"ladders": ladders})
    dash = cap["functions"]["dashboard"]
    assert dash["cpu_ms"] == round(DASHBOARD_HIT_MISS["dashboard_hit"] * 1.0 + DASHBOARD_HIT_MISS["dashboard_miss"] * 3.0, 2)
    assert dash["sustained_rps"] == 200
    # 10,000 req/s of the mix: sum over kinds of rate x CPU, at the planned utilisation
    expected = sum(10_000 * share * (dash["cpu_ms"] if k == "dashboard" else 2.0) / 1000 for k, share in MIX.items())
    assert cap["10k_rps"]["vcpus"] == math.ceil(expected / TARGET_UTILISATION)
    assert cap["10k_rps"]["rps"] == 10_000
    assert cap["100k_mau"]["rps"] > 0 and cap["model"]["peak_factor"] == PEAK_FACTOR


def test_the_report_states_the_setup_and_every_section(tmp_path: Path) -> None:
    ladders = {k: [step(100, 10, 2.0), step(300, 70, 2.0)] for k in ("floor", "deck", "swipe", "presign", "webhook", "ingest",
                                                                         "dashboard_hit", "dashboard_miss",
                                                                         "dashboard_hit (naive)", "dashboard_miss (naive)")}
    data: dict[str, Any] = {
        "profile": "quick", "settings": {"step": 2.0, "rates": [100, 300]}, "workers": 2,
        "machine": "Linux x86_64, 2 cores (test cpu), 4 GiB, Python 3.11", "command": "edgefn bench --quick",
        "started_at": "2026-11-24T00:00:00+00:00", "seconds": 100.0, "versions": {"postgres": "16.2"},
        "dataset": {"auth.users": 2000}, "ladders": ladders,
        "mix": [{**step(100, 12, 2.0), "by_kind": {"deck": step(100, 12, 2.0)["summary"]}}],
        "scaling": [{"workers": 1, "rps": 400.0, "p50_ms": 5.0, "p95_ms": 9.0, "p99_ms": 12.0, "cpu_ms": 2.0, "non_2xx": 0}],
        "cold_start": {"(floor) python -c pass": {"wall_ms": 20.0, "import_ms": 0.0}, "batch-swipe": {"wall_ms": 90.0, "import_ms": 60.0}},
        "faults": {"exit": 0, "seconds": 60.0, "summary": "4 passed", "output_tail": "",
                   "records": [{"fault": "redis down 5 s", "requests": 300, "statuses": {"200": 300}, "max_ms": 80.0, "outcome": "ok"}]},
        "fuzz": {"exit": 1, "seconds": 30.0, "summary": "1 failed", "output_tail": "AssertionError: 500 on POST /x",
                 "records": [{"operations": 12, "cases": 480, "statuses": {"400": 480}, "failures": [{}], "seconds": 30.0}]},
    }
    data["capacity"] = capacity(data)
    out = tmp_path / "report.md"
    write(data, out, with_plots=False)
    text = out.read_text()
    assert "`edgefn bench --quick`" in text and "2 cores (test cpu)" in text and "auth.users 2,000" in text
    # the deck sustained 100 req/s (300 missed the p99 goal)
    assert "| recommendations: deck of 20 nearby, miss | 100 | 3.33 / 6.67 / 10.00 | 2.00 | 300 |" in text
    assert "## Capacity" in text and "10,000 req/s of the mix" in text
    assert "| redis down 5 s | 300 |" in text
    assert "FAILED (exit 1)" in text and "AssertionError: 500 on POST /x" in text  # a failed suite is shown, not hidden
