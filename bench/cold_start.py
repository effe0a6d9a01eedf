"""Cold import of each function's handler module, in a fresh process each time.

    python -m bench.cold_start [--runs 7] [--json]
    python -m bench.cold_start --end-to-end [--runs 20] [--json]   # bench/cold_start_e2e.py

For each function: the median (of N fresh processes) wall time of `python -c "import
<handler>"`, and the import alone timed inside the child; beside the floor
(`python -c pass`) and a naive handler that imports boto3, sentry_sdk, psycopg, supabase and
redis at the top. Budget: a handler's import must stay under BUDGET_MS (import only), and well
under the naive handler.

The naive handler runs in a virtualenv of its own (`bench/out/naive-venv`, made on the first
run): supabase's realtime client pins a websockets older than the one the project's server
takes, so one environment cannot hold both. Where that environment cannot be built (no
package index), the naive handler is measured in the project's environment without supabase,
and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from functions import FUNCTIONS

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MS = 250.0

_CHILD = "import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"


def measure(module: str | None, runs: int, python: str = sys.executable, path: list[str] | None = None) -> dict[str, float]:
    walls: list[float] = []
    imports: list[float] = []
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "0"}
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    code = "pass" if module is None else _CHILD.format(module=module)
    # one untimed run warms the OS file cache and writes .pyc files, as a deployed package has them
    subprocess.run([python, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
    for _ in range(runs):
        started = time.perf_counter()
        out = subprocess.run([python, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        walls.append((time.perf_counter() - started) * 1000)
        if module is not None:
            imports.append(float(out.stdout.strip().splitlines()[-1]))
    return {
        "wall_ms": statistics.median(walls),
        "import_ms": statistics.median(imports) if imports else 0.0,
    }


NAIVE_VENV = ROOT / "bench" / "out" / "naive-venv"
#: what the naive handler imports at the top, as the hand-written edge functions did
NAIVE_PACKAGES = ("supabase", "boto3", "psycopg[binary]", "redis", "sentry-sdk", "mangum", "starlette")
NAIVE = "(baseline) naive handler"


def naive_environment() -> tuple[str | None, str]:
    """(its python, "") when the naive handler's own virtualenv holds everything it imports;
    else (None, why not)."""
    python = NAIVE_VENV / "bin" / "python"
    check = [str(python), "-c", "import supabase, boto3, psycopg, redis, sentry_sdk, mangum"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python), ""
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(NAIVE_VENV)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *NAIVE_PACKAGES], check=True, capture_output=True,
                       text=True, timeout=600)
    except subprocess.CalledProcessError as exc:
        lines = ((exc.stderr or "") if isinstance(exc.stderr, str) else "").strip().splitlines()
        return None, lines[-1] if lines else f"exit {exc.returncode}"
    except subprocess.TimeoutExpired:
        return None, "pip install timed out"
    return str(python), ""


def run(runs: int = 7) -> dict[str, dict[str, float]]:
    results = {"(floor) python -c pass": measure(None, runs)}
    for name, module in sorted(FUNCTIONS.items()):
        results[name] = measure(module, runs)
    python, why_not = naive_environment()
    if python is not None:
        results[NAIVE + " (with supabase)"] = measure("bench.naive_handler", runs, python=python, path=[str(ROOT)])
    else:
        print(f"the naive handler's environment could not be built ({why_not}): measured WITHOUT supabase",
              file=sys.stderr)
        results[NAIVE + " (WITHOUT supabase)"] = measure("bench.naive_handler", runs)
    return results


def render(results: dict[str, dict[str, float]], runs: int) -> str:
    floor = results["(floor) python -c pass"]["wall_ms"]
    naive = next(r["import_ms"] for n, r in results.items() if n.startswith(NAIVE))
    width = max(len(n) for n in results) + 2
    lines = [
        f"cold import, median of {runs} fresh processes (Python {sys.version.split()[0]}, {os.cpu_count()} cores)",
        f"{'function':<{width}}{'process ms':>12}{'import ms':>11}{'over floor':>12}{'vs naive':>10}",
    ]
    for name, r in results.items():
        ratio = f"{r['import_ms'] / naive:.2f}x" if r["import_ms"] and naive else "-"
        lines.append(
            f"{name:<{width}}{r['wall_ms']:>12.1f}{r['import_ms']:>11.1f}{r['wall_ms'] - floor:>12.1f}{ratio:>10}"
        )
    worst = max(r["import_ms"] for n, r in results.items() if n in FUNCTIONS)
    verdict = "within" if worst <= BUDGET_MS else "OVER"
    lines.append(f"slowest function import {worst:.1f} ms: {verdict} the {BUDGET_MS:.0f} ms budget; naive handler {naive:.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, help="fresh processes per function (default 7; 20 end to end)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--end-to-end", action="store_true",
                   help="each zip as Lambda runs it: init, then the first requests (bench/cold_start_e2e.py)")
    args = p.parse_args(argv)
    if args.end_to_end:
        from bench.cold_start_e2e import main as end_to_end

        return end_to_end(args.runs or 20, args.json)
    args.runs = args.runs or 7
    results = run(args.runs)
    print(json.dumps(results, indent=2) if args.json else render(results, args.runs))
    worst = max(r["import_ms"] for n, r in results.items() if n in FUNCTIONS)
    return 0 if worst <= BUDGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
