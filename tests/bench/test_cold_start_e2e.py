"""The end-to-end cold-start benchmark's summary and table (no timing: made-up samples)."""

from __future__ import annotations

from typing import Any

from bench.cold_start_e2e import render, summarise


def sample(init: float, init_cpu: float, first: float, status: int = 200) -> dict[str, Any]:
    return {"init_ms": init, "init_cpu_ms": init_cpu, "requests": [
        {"ms": first, "cpu_ms": first / 2, "status": status, "code": "RATE_LIMITER_UNAVAILABLE" if status == 503 else None},
        {"ms": 3.0, "cpu_ms": 1.0, "status": 200, "code": None},
    ]}


def test_summary_and_table_name_the_floor_the_503s_and_the_verdict() -> None:
    at_init = summarise([sample(200, 180, 20), sample(220, 190, 30), sample(400, 200, 40, status=503)])
    assert at_init["cold_p50_ms"] == 250 and at_init["cold_cpu_p50_ms"] == 205 and at_init["n503"] == 1
    assert at_init["codes"] == ["RATE_LIMITER_UNAVAILABLE"]
    lazy = summarise([sample(100, 90, 150)] * 3)
    results = {"python": "3.13", "runs": 3, "load_start": (1.0, 1.0, 1.0), "load": (2.0, 1.0, 1.0),
               "floor": {"pass_ms": 10.0, "imports_ms": 180.0, "imports_cpu_ms": 164.0},
               "functions": {"batch-swipe": {"init": at_init, "lazy": lazy}}}
    text = render(results)
    assert "load average 1.0 at the start, 2.0 at the end" in text
    assert "a process doing nothing 10 ms" in text and "180 ms, 164 ms CPU" in text and "1.25x that CPU" in text
    assert "error codes: at init ['RATE_LIMITER_UNAVAILABLE']" in text
    assert text.endswith("slowest init + first request p50 250 ms, 1 503s at init: MISSES the goal (<= 250 ms, no 503)")
