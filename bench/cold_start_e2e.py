"""Cold starts as Lambda runs them: `python -m bench.cold_start --end-to-end [--runs 20]`.

Each function's zip (built by `edgefn package` for the target Python on this host's
architecture) runs in a fresh interpreter of the target version, isolated, with nothing on
its path but the unpacked zip, the environment a deployed function gets, and:

- Postgres behind PgBouncer in transaction mode (as Supavisor on port 6543), seeded;
- Redis through the Upstash REST bridge (`edgefn/upstash_bridge.py`), as on Lambda;
- the signing keys served over HTTP as Supabase serves its JWKS.

One cold start = import the handler (Lambda's init phase: settings, connections), then the
first request (authenticated: a user's token, or for webhooks a signed delivery), then a
second one. Printed per function: the medians of init, first and second request, of
init + first (p50 and p90), and the 503s. The baseline, in the same run: the same zips
with init doing nothing (`AWS_LAMBDA_FUNCTION_NAME` unset, as before connections were
opened at init), where the first request sets up the connections itself under the 50 ms
Redis deadline. Goal: init + first p50 <= 250 ms and no 503 in 20 cold starts per
function.

Beside them, the floor on this machine, in the same interpreter and isolation: a process
that does nothing (`pass`, its whole run), and one that imports only the libraries every
function's first request cannot do without (asyncio, pydantic with one model, starlette's
request and response, psycopg and its pool, PyJWT with cryptography) and nothing of ours.
No code of this project can make a cold start cheaper than that.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import statistics
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from functions import FUNCTIONS

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "tests" / "events"
GOAL_MS = 250.0
ISSUER = "http://127.0.0.1/auth/v1"
PAYSTACK_SECRET = "sk_test_bench_cold_start"

CHILD = r"""
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
sys.path.insert(0, sys.argv[1])
import importlib
h = importlib.import_module(sys.argv[2])                  # init
t1, c1 = time.perf_counter(), time.process_time()
class Ctx:
    aws_request_id = "bench"
    function_name = "bench"
    def get_remaining_time_in_millis(self): return 10000
out = {"init_ms": (t1 - t0) * 1000, "init_cpu_ms": (c1 - c0) * 1000, "requests": []}
for event in json.loads(sys.argv[3]):
    s, c = time.perf_counter(), time.process_time()
    r = h.handler(event, Ctx())
    out["requests"].append({"ms": (time.perf_counter() - s) * 1000, "cpu_ms": (time.process_time() - c) * 1000,
                            "status": r["statusCode"],
                            "code": (json.loads(r["body"]).get("error") or {}).get("code") if r.get("body") else None})
sys.stdout.write("RESULT " + json.dumps(out) + "\n")
"""


def _event(route: str, method: str, path: str, *, token: str | None = None, body: str = "",
           headers: dict[str, str] | None = None, query: str = "") -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / "function_url_get_health.json").read_text())
    full = f"/functions/v1/{route}{path}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = full
    event["requestContext"]["http"]["method"] = method
    event["rawQueryString"] = query
    event["headers"] = {**event["headers"], **(headers or {})}
    if token:
        event["headers"]["authorization"] = f"Bearer {token}"
    if body:
        event["body"] = body
        event["isBase64Encoded"] = False
        event["headers"]["content-type"] = "application/json"
    return event


def requests_for(route: str, token: str, other_user: str) -> list[dict[str, Any]]:
    """The first and second request of a cold start: what a client would send first."""
    if route == "webhooks":
        raw = (EVENTS / "webhooks" / "paystack_charge_success.json").read_text()
        sig = hmac.new(PAYSTACK_SECRET.encode(), raw.encode(), hashlib.sha512).hexdigest()
        return [_event(route, "POST", "/paystack", body=raw, headers={"x-paystack-signature": sig})] * 2
    if route == "batch-swipe":
        body = json.dumps({"swipes": [{"target_id": other_user, "action": "pass"}]})
        return [_event(route, "POST", "/", token=token, body=body)] * 2
    path = "/inbox" if route == "realtime-orchestrator" else "/"
    return [_event(route, "GET", path, token=token)] * 2


@contextlib.contextmanager
def environment(users: int = 50) -> Iterator[dict[str, Any]]:
    """Seeded Postgres behind PgBouncer, Redis behind the Upstash bridge, a JWKS server."""
    import psycopg

    from bench.harness import scratch_database, services
    from edgefn.jwks_server import JWKSServer
    from edgefn.pgbouncer import PgBouncer
    from edgefn.seed import seed, user_id
    from edgefn.tokens import _new_private_jwk, mint, public_jwks
    from edgefn.upstash_bridge import BridgeServer

    with services() as svc, scratch_database(svc.admin_dsn) as dsn:
        seed(dsn, users)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("select count(*) from auth.users").fetchone() == (users,)
        bouncer = PgBouncer(dsn)
        bridge = BridgeServer(svc.redis_url, token="bench-upstash-token")
        key = _new_private_jwk()
        jwks = JWKSServer(public_jwks(key))
        try:
            pooled = bouncer.start()
            bridge_url = bridge.start()
            uid, other = user_id(1), user_id(2)
            yield {
                "token": mint(key, user_id=uid, issuer=ISSUER, tier="paid"),
                "other_user": other,
                "env": {
                    "AWS_LAMBDA_FUNCTION_VERSION": "1",
                    "EDGEFN_STAGE": "bench",
                    "EDGEFN_METRICS": "emf",
                    "EDGEFN_ACCESS_LOG": "0",
                    "DATABASE_URL": pooled,
                    "DB_POOL_MAX": "2",
                    "UPSTASH_REDIS_REST_URL": bridge_url,
                    "UPSTASH_REDIS_REST_TOKEN": "bench-upstash-token",
                    "KEY_PREFIX": f"bench-cold:{os.getpid()}",
                    "SUPABASE_JWKS_URL": jwks.url,
                    "JWT_ISSUER": ISSUER,
                    "PAYSTACK_SECRET_KEY": PAYSTACK_SECRET,
                    "R2_ENDPOINT_URL": "http://127.0.0.1:9",
                    "R2_BUCKET": "bench",
                    "R2_ACCESS_KEY_ID": "bench",
                    "R2_SECRET_ACCESS_KEY": "bench",
                    "R2_PUBLIC_URL": "https://media.example",
                },
            }
        finally:
            jwks.close()
            bridge.stop()
            bouncer.stop()


def cold_start(interpreter: str, tree: Path, route: str, env: dict[str, str], events: list[dict[str, Any]],
               at_init: bool) -> dict[str, Any]:
    child_env = {"PATH": "", **env}
    if at_init:
        child_env["AWS_LAMBDA_FUNCTION_NAME"] = f"edgefn-bench-{route}"
    out = subprocess.run([interpreter, "-I", "-S", "-c", CHILD, str(tree), FUNCTIONS[route], json.dumps(events)],
                         capture_output=True, text=True, env=child_env, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{route}: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    return result


#: what every function's first request needs, whatever our code does (the floor)
FLOOR = r"""
import sys, time, json
t0, c0 = time.perf_counter(), time.process_time()
sys.path.insert(0, sys.argv[1])
import asyncio, pydantic, starlette.requests, starlette.responses, psycopg, psycopg_pool, jwt, jwt.algorithms
class M(pydantic.BaseModel):
    a: int
M(a=1)
sys.stdout.write("RESULT " + json.dumps({"ms": (time.perf_counter() - t0) * 1000,
                                          "cpu_ms": (time.process_time() - c0) * 1000}) + "\n")
"""


def floor(interpreter: str, tree: Path, runs: int) -> dict[str, float]:
    """Medians: a whole `pass` process (wall), and the floor's imports (wall, CPU)."""
    walls, imports, cpus = [], [], []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([interpreter, "-I", "-S", "-c", "pass"], check=True, env={"PATH": ""})
        walls.append((time.perf_counter() - t) * 1000)
        out = subprocess.run([interpreter, "-I", "-S", "-c", FLOOR, str(tree)], capture_output=True, text=True,
                             check=True, env={"PATH": ""})
        r = json.loads(out.stdout.split("RESULT ", 1)[1])
        imports.append(r["ms"])
        cpus.append(r["cpu_ms"])
    return {"pass_ms": statistics.median(walls), "imports_ms": statistics.median(imports),
            "imports_cpu_ms": statistics.median(cpus)}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    init = [r["init_ms"] for r in runs]
    first = [r["requests"][0]["ms"] for r in runs]
    second = [r["requests"][1]["ms"] for r in runs]
    total = [i + f for i, f in zip(init, first)]
    statuses = [q["status"] for r in runs for q in r["requests"]]
    return {
        "init_cpu_ms": statistics.median(r["init_cpu_ms"] for r in runs),
        "first_cpu_ms": statistics.median(r["requests"][0]["cpu_ms"] for r in runs),
        "init_ms": statistics.median(init), "first_ms": statistics.median(first),
        "second_ms": statistics.median(second), "cold_p50_ms": statistics.median(total),
        "cold_p90_ms": _pct(total, 0.9),
        "cold_cpu_p50_ms": statistics.median(r["init_cpu_ms"] + r["requests"][0]["cpu_ms"] for r in runs),
        "n503": sum(1 for s in statuses if s == 503),
        "first_status": sorted({r["requests"][0]["status"] for r in runs}),
        "codes": sorted({q["code"] for r in runs for q in r["requests"] if q["code"]}),
    }


def run(runs: int = 20) -> dict[str, Any]:
    from edgefn.package import _native_arch, build
    from edgefn.target import TARGET
    from edgefn.zipcheck import interpreter_for

    interpreter = interpreter_for(TARGET.python)
    if interpreter is None:
        raise SystemExit(f"needs Python {TARGET.python} (the Lambda target) on this host")
    results: dict[str, Any] = {"python": TARGET.python, "runs": runs, "functions": {}, "load_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="edgefn-cold-") as tmp:
        trees = {}
        for built in build(sorted(FUNCTIONS), Path(tmp) / "zips", arch=_native_arch(), run_health=False):
            tree = Path(tmp) / "task" / built.function
            zipfile.ZipFile(built.path).extractall(tree)
            trees[built.function] = tree
        results["floor"] = floor(interpreter, trees[sorted(FUNCTIONS)[0]], runs)
        with environment() as env:
            for route in sorted(FUNCTIONS):
                events = requests_for(route, env["token"], env["other_user"])
                per_mode = {}
                for mode, at_init in (("init", True), ("lazy", False)):
                    samples = [cold_start(interpreter, trees[route], route, env["env"], events, at_init) for _ in range(runs)]
                    per_mode[mode] = summarise(samples)
                results["functions"][route] = per_mode
    results["load"] = os.getloadavg()
    return results


def render(results: dict[str, Any]) -> str:
    lines = [
        f"cold starts as Lambda runs them: Python {results['python']}, {results['runs']} fresh processes per "
        f"function and mode; Postgres behind PgBouncer (transaction mode), Redis through the Upstash REST "
        f"bridge; load average {results.get('load_start', results['load'])[0]:.1f} at the start, "
        f"{results['load'][0]:.1f} at the end, on {os.cpu_count()} cores",
        "connections opened at init (this code) | baseline: init does nothing, the first request connects",
        "medians in ms of wall time; cpu: the process's own CPU time (what a loaded machine does not inflate); "
        "cold: init + first request",
        f"{'function':<23}{'init':>7}{'(cpu)':>7}{'first':>7}{'(cpu)':>7}{'second':>7}{'cold p50':>9}{'p90':>6}"
        f"{'(cpu)':>6}{'503s':>5} |{'init':>6}{'first':>7}{'cold p50':>9}{'503s':>5}{'first/base':>11}",
    ]
    worst, worst_cpu, total503 = 0.0, 0.0, 0
    for route, m in results["functions"].items():
        a, b = m["init"], m["lazy"]
        worst = max(worst, a["cold_p50_ms"])
        worst_cpu = max(worst_cpu, a.get("cold_cpu_p50_ms", a["init_cpu_ms"] + a["first_cpu_ms"]))
        total503 += a["n503"]
        lines.append(
            f"{route:<23}{a['init_ms']:>7.0f}{a['init_cpu_ms']:>7.0f}{a['first_ms']:>7.0f}{a['first_cpu_ms']:>7.0f}"
            f"{a['second_ms']:>7.0f}{a['cold_p50_ms']:>9.0f}"
            f"{a['cold_p90_ms']:>6.0f}{a.get('cold_cpu_p50_ms', a['init_cpu_ms'] + a['first_cpu_ms']):>6.0f}"
            f"{a['n503']:>5} |{b['init_ms']:>6.0f}{b['first_ms']:>7.0f}"
            f"{b['cold_p50_ms']:>9.0f}{b['n503']:>5}{a['first_ms'] / b['first_ms']:>10.2f}x"
        )
        if a["codes"] or b["codes"]:
            lines.append(f"{'':<23}error codes: at init {a['codes'] or '-'}; baseline {b['codes'] or '-'}")
    if "floor" in results:
        fl = results["floor"]
        lines.append(f"floor: a process doing nothing {fl['pass_ms']:.0f} ms (whole run); importing only the libraries "
                     f"every first request needs (asyncio, pydantic, starlette, psycopg, PyJWT + cryptography) "
                     f"{fl['imports_ms']:.0f} ms, {fl['imports_cpu_ms']:.0f} ms CPU; the slowest function's init + "
                     f"first request takes {worst_cpu / fl['imports_cpu_ms']:.2f}x that CPU")
    verdict = "meets" if worst <= GOAL_MS and total503 == 0 else "MISSES"
    lines.append(f"slowest init + first request p50 {worst:.0f} ms, {total503} 503s at init: {verdict} the goal "
                 f"(<= {GOAL_MS:.0f} ms, no 503)")
    return "\n".join(lines)


def main(runs: int, as_json: bool) -> int:
    results = run(runs)
    print(json.dumps(results, indent=2) if as_json else render(results))
    worst = max(m["init"]["cold_p50_ms"] for m in results["functions"].values())
    n503 = sum(m["init"]["n503"] for m in results["functions"].values())
    return 0 if worst <= GOAL_MS and n503 == 0 else 1
