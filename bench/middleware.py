"""Middleware benchmark: what the shared stack costs on one local server with real Postgres
and Redis, and how our limiter compares with upstash-ratelimit on the same transport.

    python -m bench.middleware [--duration 5] [--connections 32] [--json]

Prints requests per second and p50/p99 for
  (a) a bare route with no middleware,
  (b) a route that returns a Redis value with one GET,
  (c) the full stack on a cached authenticated route,
the server's CPU per request, the ratio (c)/(b) (goal: at least 0.7), and the Redis and
Postgres round trips per request for (c) (goal: 1 and 0). Then upstash-ratelimit's sliding window beside our limiter,
both through the Upstash REST protocol (the bridge) to the same Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

from bench import harness
from bench.loadgen import build_request, closed_loop
from edgefn.tokens import _new_private_jwk, mint, public_jwks

ISSUER = "http://127.0.0.1/auth/v1"


def run_http(admin_dsn: str, redis_url: str, duration: float, connections: int, rounds: int = 3) -> dict[str, Any]:
    key = _new_private_jwk()
    prefix = "bench:" + secrets.token_hex(4)
    with harness.scratch_database(admin_dsn) as dsn:
        env = {
            "DATABASE_URL": dsn,
            "REDIS_URL": redis_url,
            "KEY_PREFIX": prefix,
            "JWT_ISSUER": ISSUER,
            "SUPABASE_JWKS": json.dumps(public_jwks(key)),
            "REDIS_TIMEOUT_MS": "1000",
        }
        with harness.server_process("bench.apps.middleware_app:app", env, ready_path="/bare") as (port, pid):
            host = f"127.0.0.1:{port}"
            tokens = [mint(key, user_id=str(uuid.uuid4()), tier="paid", issuer=ISSUER) for _ in range(8)]
            scenarios = {
                "(a) bare route, no middleware": [build_request("GET", "/bare", host)],
                "(b) one Redis GET": [build_request("GET", "/redis", host)],
                "(c) full stack, cached authenticated route": [
                    build_request("GET", "/functions/v1/bench/cached", host, {"Authorization": f"Bearer {t}"}) for t in tokens
                ],
            }
            # warm every token's cache entry and the process's pools
            for t in tokens:
                r = httpx.get(f"http://{host}/functions/v1/bench/cached", headers={"Authorization": f"Bearer {t}"})
                assert r.status_code == 200, r.text
            for reqs in scenarios.values():  # warm-up, not counted
                asyncio.run(closed_loop("127.0.0.1", port, reqs, connections=connections, duration=1.0, warmup=0))
            # rounds interleave the scenarios, so a noisy moment hits all of them; each
            # scenario reports its median round
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
            for _ in range(rounds):
                for name, reqs in scenarios.items():
                    before = httpx.get(f"http://{host}/stats").json()
                    cpu_before = harness.cpu_seconds(pid)
                    res = asyncio.run(closed_loop("127.0.0.1", port, reqs, connections=connections, duration=duration, warmup=0))
                    cpu_after = harness.cpu_seconds(pid)
                    after = httpx.get(f"http://{host}/stats").json()
                    summary = res.summary()
                    # the server's own CPU per request (one worker: it is the bottleneck
                    # when it nears one core's worth of CPU seconds per second)
                    summary["server_cpu_us_per_request"] = round((cpu_after - cpu_before) / max(res.count, 1) * 1e6, 1)
                    summary["redis_round_trips_per_request"] = round((after["kv"] - before["kv"]) / max(res.count, 1), 3)
                    summary["postgres_round_trips_per_request"] = round((after["db"] - before["db"]) / max(res.count, 1), 3)
                    runs[name].append(summary)
            results = {}
            for name, rs in runs.items():
                median = sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
                median["rps_rounds"] = [r["rps"] for r in rs]
                if not name.startswith("(c)"):
                    median.pop("redis_round_trips_per_request")
                    median.pop("postgres_round_trips_per_request")
                results[name] = median
    a, b, c = (results[k]["rps"] for k in results)
    return {"scenarios": results, "ratio_c_over_b": round(c / b, 3) if b else None, "ratio_c_over_a": round(c / a, 3) if a else None}


def run_limiters(redis_url: str, duration: float, concurrency: int) -> dict[str, Any]:
    """Both limiters through the REST bridge (a separate process) to the same Redis."""
    token = secrets.token_urlsafe(16)
    port = harness.free_port()
    code = (
        "import time, sys; from edgefn.upstash_bridge import BridgeServer; "
        f"b = BridgeServer({redis_url!r}, token={token!r}, port={port}); b.start(); print('ready', flush=True); "
        "time.sleep(3600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=harness.ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        return asyncio.run(_limiters(f"http://127.0.0.1:{port}", token, duration, concurrency))
    finally:
        proc.terminate()
        proc.wait(10)


async def _limiters(url: str, token: str, duration: float, concurrency: int) -> dict[str, Any]:
    from upstash_ratelimit.asyncio import Ratelimit, SlidingWindow
    from upstash_redis.asyncio import Redis

    from shared.kv import UpstashKV
    from shared.ratelimit import RateLimiter, RateRule

    theirs = Ratelimit(
        redis=Redis(url, token, rest_retries=0, allow_telemetry=False),
        limiter=SlidingWindow(max_requests=10**9, window=60),
        prefix="bench-theirs-" + secrets.token_hex(3),
    )
    kv = UpstashKV(url, token, timeout=5.0, prefix="bench-ours-" + secrets.token_hex(3))
    ours = RateLimiter(kv)
    rule = RateRule(name="bench", limits={"free": 10**9})

    async def drive(check: Any) -> dict[str, float]:
        count = 0
        lat: list[float] = []
        stop = time.perf_counter() + duration

        async def worker(i: int) -> None:
            nonlocal count
            ident = f"user-{i}"
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await check(ident)
                lat.append((time.perf_counter() - t0) * 1000)
                count += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        lat.sort()
        return {"checks_per_s": round(count / elapsed, 1), "p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(len(lat) * 0.99)], 2)}

    await drive(lambda i: theirs.limit(i))  # warm both
    await drive(lambda i: ours.check(rule, i, user_id=i))
    them = await drive(lambda i: theirs.limit(i))
    us = await drive(lambda i: ours.check(rule, i, user_id=i))
    await kv.aclose()
    return {
        "upstash-ratelimit SlidingWindow (EVAL, full script each call)": them,
        "edgefn RateLimiter (EVALSHA, tier + exact window in one script)": us,
        "ratio_ours_over_theirs": round(us["checks_per_s"] / them["checks_per_s"], 3),
    }


def render(report: dict[str, Any]) -> str:
    lines = [f"middleware benchmark: {report['machine']}", report["note"], ""]
    lines.append(f"{'scenario':<46}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'server CPU us/req':>19}")
    for name, s in report["http"]["scenarios"].items():
        rounds = "/".join(f"{r:.0f}" for r in s["rps_rounds"])
        lines.append(
            f"{name:<46}{s['rps']:>9.0f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['non_2xx'] + s['errors']:>9}"
            f"{s['server_cpu_us_per_request']:>19.0f}   rounds {rounds}"
        )
    c = list(report["http"]["scenarios"].values())[2]
    lines += [
        "",
        f"(c)/(b) = {report['http']['ratio_c_over_b']:.2f}   (goal >= 0.70)    (c)/(a) = {report['http']['ratio_c_over_a']:.2f}",
        f"(c) round trips per request: Redis {c['redis_round_trips_per_request']}, Postgres {c['postgres_round_trips_per_request']}   (goal 1 and 0)",
        "",
        f"{'limiter (both over Upstash REST, same Redis)':<66}{'checks/s':>10}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for name, s in report["limiters"].items():
        if isinstance(s, dict):
            lines.append(f"{name:<66}{s['checks_per_s']:>10.0f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}")
    lines.append(f"ours / theirs = {report['limiters']['ratio_ours_over_theirs']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3.0, help="seconds per scenario per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with harness.services() as svc:
        report = {
            "machine": harness.machine(),
            "note": f"one uvicorn worker (uvloop, httptools), JSON access log on; closed loop, {args.connections} keep-alive connections; {args.rounds} interleaved rounds of {args.duration:.0f} s per scenario after a 1 s warm-up, median round shown; load generator on the same machine",
            "http": run_http(svc.admin_dsn, svc.redis_url, args.duration, args.connections, args.rounds),
            "limiters": run_limiters(svc.redis_url, args.duration, 16),
        }
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
