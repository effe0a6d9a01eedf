"""The system benchmark: every function served by several worker processes sharing one
Postgres and one Redis, as many Lambda or Cloud Run instances do; open-loop load per function
and in a realistic mix, against the floor (a bare Starlette route) and the naive dashboard
the seed app shipped; throughput against worker count; cold imports; the fault suite and the
fuzzer; a capacity table. Writes `bench/report.md` and PNG plots in `bench/plots/`.

    edgefn bench [--quick] [--workers 2] [--out bench/report.md] [--skip faults,fuzz,...]

Without DATABASE_URL / REDIS_URL, embedded PostgreSQL 16 (with pgvector) and Redis start in a
temporary folder. `--quick` seeds 2,000 users and shortens every step (under 3 minutes);
the full run seeds 100,000 (the function issues' scale), runs each function's own benchmark
too, and takes about 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import fleet, harness
from bench.loadgen import build_request, closed_loop, open_loop

ROOT = harness.ROOT
HOST = "127.0.0.1"
P99_GOAL_MS = 50.0
#: a step whose p99 passes this ends the ladder (the next, faster step would only queue)
GIVE_UP_P99_MS = 250.0
#: share of each request kind in the realistic mix (sums to 1)
MIX = {"dashboard": 0.30, "deck": 0.25, "swipe": 0.15, "presign": 0.05, "webhook": 0.05, "ingest": 0.20}
#: the traffic model behind the 100K MAU row: requests per daily active user per day
PER_DAU_PER_DAY = {"dashboard": 8, "deck": 15, "swipe": 10, "presign": 1, "webhook": 0.05, "ingest": 20}
DAU_SHARE = 0.30  # daily over monthly active users
PEAK_FACTOR = 3.0  # busiest hour over the day's average
TARGET_UTILISATION = 0.7  # plan instances to run at 70 % CPU
#: dashboards as users ask for them: mostly the cached one (the mix and the capacity table)
DASHBOARD_HIT_MISS = {"dashboard_hit": 0.8, "dashboard_miss": 0.2}

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"users": 2_000, "step": 1.5, "rates": [100, 400], "mix_rates": [100, 300], "workers": [1, 2],
              "cold_runs": 3, "fault_seconds": 4, "fuzz_examples": 50, "function_benches": False},
    "full": {"users": 100_000, "step": 5.0, "rates": [50, 100, 200, 400, 800, 1600], "mix_rates": [100, 250, 500],
             "workers": [1, 2, 4], "cold_runs": 7, "fault_seconds": 20, "fuzz_examples": 400, "function_benches": True},
}
#: request kinds whose signature carries a timestamp (Standard Webhooks: 5 minutes' tolerance)
SIGNED_WITH_TIME = ("ingest",)
FUNCTION_BENCHES = ["middleware", "dashboard", "dating", "upload", "webhooks", "orchestrator"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------


def prepare(admin_dsn: str, users: int) -> str:
    """The seeded database, kept between runs (re-seeded when the size differs)."""
    from edgefn.seed import seed

    dsn = harness.kept_database(admin_dsn, f"edgefn_bench_system_{users}", log)
    started = time.perf_counter()
    seed(dsn, users, log=lambda m: log(f"  seed: {m}"))
    log(f"dataset ({users:,} users) ready in {time.perf_counter() - started:.1f} s")
    return dsn


def dataset_counts(dsn: str) -> dict[str, int]:
    import psycopg

    out = {}
    with psycopg.connect(dsn) as conn:
        for table in ("auth.users", "public.profiles", "public.purchases", "public.swipes", "public.matches",
                      "public.profile_embeddings"):
            out[table] = int(conn.execute(f"select count(*) from {table}").fetchone()[0])  # type: ignore[index]
    return out


@dataclass
class World:
    users: list[dict[str, Any]]
    plan_users: list[str]
    tokens: dict[str, str] = field(default_factory=dict)


def make_world(dsn: str, f: fleet.Fleet, n: int) -> World:
    """`n` visible users with a location (deck and swipe callers), tokens for them, and the
    webhook benchmark's plan with users of its own."""
    from bench import webhooks as wb
    from bench.dating import sample

    users = sample(dsn, n, 20261124)
    world = World(users=users, plan_users=wb.prepare(dsn, 200))
    for u in users:
        world.tokens[u["id"]] = f.token(u["id"], tier="free")
    return world


# -- request pools ---------------------------------------------------------------------------


def _auth(world: World, user: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + world.tokens[user]}


def pool(kind: str, world: World, n: int, rng: random.Random) -> list[bytes]:
    """`n` distinct raw requests of one kind."""
    from bench import webhooks as wb

    ids = [u["id"] for u in world.users]
    out: list[bytes] = []
    if kind == "floor":
        return [build_request("GET", "/bare", HOST)] * min(n, 1)
    if kind == "dashboard_hit":  # one key per user (range=year), warmed before the ladder
        for i in range(min(n, len(ids))):
            out.append(build_request("GET", "/functions/v1/optimized-dashboard?range=year", HOST, _auth(world, ids[i])))
    elif kind == "dashboard_miss":  # a (user, range) never asked before, while the pool lasts
        ranges = ["month", "week", "quarter"]
        for i in range(min(n, 3 * len(ids))):
            u = ids[i % len(ids)]
            out.append(build_request("GET", f"/functions/v1/optimized-dashboard?range={ranges[i // len(ids)]}", HOST,
                                     _auth(world, u)))
    elif kind == "deck":  # a (user, filter set) never asked before, while the pool lasts
        distances = [50, 40, 30]
        for i in range(min(n, 3 * len(ids))):
            u = ids[i % len(ids)]
            out.append(build_request("GET", f"/functions/v1/recommendations?limit=20&max_distance_km={distances[i // len(ids)]}",
                                     HOST, _auth(world, u)))
    elif kind == "swipe":
        for i in range(n):
            u = ids[i % len(ids)]
            targets = rng.sample(ids, 11)
            swipes = [{"target_id": t, "action": rng.choice(["like", "pass", "pass"])} for t in targets if t != u][:10]
            body = json.dumps({"swipes": swipes, "idempotency_key": uuid.uuid4().hex}).encode()
            out.append(build_request("POST", "/functions/v1/batch-swipe", HOST,
                                     {**_auth(world, u), "content-type": "application/json"}, body))
    elif kind == "presign":
        for i in range(n):
            u = ids[i % len(ids)]
            body = json.dumps({"bucket": "posts", "content_type": "image/jpeg", "content_length": 150_000 + i,
                               "filename": "photo.jpg"}).encode()
            out.append(build_request("POST", "/functions/v1/upload-media/presign", HOST,
                                     {**_auth(world, u), "content-type": "application/json"}, body))
    elif kind == "webhook":
        out, _ = wb.Deliveries(world.plan_users).requests(HOST, n)
    elif kind == "ingest":
        for i in range(n):
            recipient = ids[rng.randrange(len(ids))]
            body = json.dumps({"type": "like.received", "data": {"i": i}, "recipients": [recipient]}).encode()
            out.append(build_request("POST", "/functions/v1/realtime-orchestrator/events", HOST,
                                     fleet.standard_webhook_headers(body), body))
    else:
        raise ValueError(kind)
    return out


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Step:
    rate: float
    summary: dict[str, Any]
    cpu_ms: float
    late: int
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        s = self.summary
        return s["errors"] == 0 and s["non_2xx"] == 0 and s["p99_ms"] < P99_GOAL_MS and self.late == 0


def run_step(port: int, pid: int, requests: list[bytes], rate: float, duration: float,
             labels: list[str] | None = None) -> tuple[Step, Any]:
    cpu0 = harness.cpu_seconds(pid)
    res = asyncio.run(open_loop(HOST, port, requests, rate=rate, duration=duration, labels=labels, timeout=10.0))
    cpu1 = harness.cpu_seconds(pid)
    cpu_ms = (cpu1 - cpu0) * 1000 / res.count if res.count else float("nan")
    statuses = {str(k): v for k, v in sorted(res.statuses.items())}
    return Step(rate, res.summary(), cpu_ms, res.late, statuses), res


def warm(port: int, requests: list[bytes]) -> None:
    """Send each request once (fills the caches a hit scenario measures)."""
    from bench.webhooks import send_all

    asyncio.run(send_all(port, requests, 16))


def settle(port: int, dsn: str, limit_s: float = 90.0) -> int:
    """Drain the outbox the previous scenario filled (webhooks and matches enqueue events),
    as the scheduled drain would, so the next scenario does not inherit its backlog.
    Returns the events routed meanwhile."""
    import httpx
    import psycopg

    def backlog() -> int:  # events not routed yet, and deliveries due now
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "select (select count(*) from public.outbox where processed_at is null)"
                " + (select count(*) from public.event_deliveries where status = 'pending' and available_at <= now())"
            ).fetchone()
            return int(row[0])  # type: ignore[index]

    before = left = backlog()
    deadline = time.monotonic() + limit_s
    while left and time.monotonic() < deadline:
        httpx.post(f"http://{HOST}:{port}/functions/v1/realtime-orchestrator/drain",
                   headers={"Authorization": f"Bearer {fleet.DRAIN_SECRET}"}, timeout=60)
        now_left = backlog()
        if now_left >= left:  # no progress: what is left waits for a later time
            break
        left = now_left
    if before:
        log(f"  (drained {before - left} queued events and deliveries before the next scenario"
            f"{f', {left} left' if left else ''})")
    return before - left


def ladder(name: str, port: int, pid: int, requests: list[bytes], rates: list[float], duration: float) -> list[Step]:
    # a short warm-up so pools, caches of compiled queries and JIT-free paths are in place
    asyncio.run(open_loop(HOST, port, requests[: max(20, int(rates[0]))], rate=rates[0], duration=1.0))
    steps: list[Step] = []
    offset = 0
    for rate in rates:
        need = int(rate * duration)
        chunk = (requests[offset:] + requests[:offset])[:need] if len(requests) > 1 else requests
        offset = (offset + need) % max(1, len(requests))
        step, _ = run_step(port, pid, chunk, rate, duration)
        steps.append(step)
        s = step.summary
        log(f"  {name:<16} {rate:>6.0f}/s  p50 {s['p50_ms']:>7.2f}  p95 {s['p95_ms']:>7.2f}  p99 {s['p99_ms']:>8.2f} ms"
            f"  cpu {step.cpu_ms:5.2f} ms/req  errors {s['errors']} late {step.late} statuses {step.statuses}")
        if s["p99_ms"] > GIVE_UP_P99_MS or s["errors"] or s["non_2xx"] > s["requests"] // 10:
            break
        time.sleep(0.5)
    return steps


def sustained(steps: list[Step]) -> Step | None:
    good = [s for s in steps if s.ok]
    return max(good, key=lambda s: s.rate) if good else None


# -- the run ---------------------------------------------------------------------------------


#: the fleet's log lines (one JSON line per request), kept for the report's 5xx breakdown
SERVER_LOG = ROOT / "bench" / "out" / "fleet-server.log"


@contextlib.contextmanager
def fleet_server(f: fleet.Fleet, workers: int) -> Iterator[tuple[int, int]]:
    # six functions per process, each with its own pool: sized so the whole fleet stays
    # under 100 Postgres connections (a default max_connections)
    env = {**f.env, "DB_POOL_MAX": str(max(2, min(10, 80 // (6 * workers))))}
    with harness.server_process(fleet.APP, env, workers=workers, ready_path="/stats", log_to=SERVER_LOG) as pp:
        yield pp


def server_errors(path: Path = SERVER_LOG) -> dict[str, int]:
    """5xx answers in the fleet's log by status, function and route, and what each 500 was."""
    from collections import Counter

    found: Counter[str] = Counter()
    if not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        status = rec.get("status")
        if rec.get("msg") == "request" and isinstance(status, int) and status >= 500:
            found[f"{status} {rec.get('function', '?')} {rec.get('route') or rec.get('path')}"] += 1
        elif rec.get("msg") == "unhandled":  # what a 500 was
            found[f"500 cause: {str(rec.get('error'))[:160]} at {rec.get('at', '?')}"] += 1
    return dict(found.most_common(30))


@contextlib.contextmanager
def naive_server(f: fleet.Fleet, workers: int) -> Iterator[tuple[int, int]]:
    env = {"SUPABASE_JWKS": f.env["SUPABASE_JWKS"]}
    with harness.server_process("bench.apps.auth_stub:app", env, workers=1, ready_path="/") as (auth_port, _):
        env2 = {"DATABASE_URL": f.env["DATABASE_URL"], "AUTH_URL": f"http://{HOST}:{auth_port}"}
        with harness.server_process("bench.apps.naive_dashboard:app", env2, workers=workers, ready_path="/") as pp:
            yield pp


def run_pytest_suite(marker: str, path: str, env: dict[str, str], report_var: str, timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(prefix=f"edgefn-{marker}-", suffix=".json", delete=False) as tmp:
        report = Path(tmp.name)
    full_env = {**os.environ, **env, report_var: str(report), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-m", marker, path, "-q", "-p", "no:cacheprovider"],
                              cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = -1, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}"
    text = report.read_text() if report.exists() else ""
    report.unlink(missing_ok=True)
    records: list[Any] = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    if not records and text.strip():
        with contextlib.suppress(ValueError):
            records = [json.loads(text)]
    tail = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or [""]
    return {"exit": code, "seconds": round(time.perf_counter() - started, 1), "records": records,
            "summary": tail[0], "output_tail": "\n".join(out.strip().splitlines()[-30:])}


def run_function_bench(name: str, env: dict[str, str], timeout: float = 1800) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, timeout=timeout)
        code, out = done.returncode, done.stdout if done.returncode == 0 else done.stdout + done.stderr[-3000:]
    except subprocess.TimeoutExpired:
        code, out = -1, f"timed out after {timeout:.0f} s"
    return {"exit": code, "seconds": round(time.perf_counter() - started, 1), "output": out.strip()}


def versions(dsn: str, redis_url: str) -> dict[str, str]:
    import importlib.metadata as md

    import psycopg
    import redis

    with psycopg.connect(dsn) as conn:
        pg = str(conn.execute("show server_version").fetchone()[0])  # type: ignore[index]
        vec = conn.execute("select extversion from pg_extension where extname = 'vector'").fetchone()
    info = redis.Redis.from_url(redis_url).info("server")
    out = {"python": platform.python_version(), "postgres": pg, "pgvector": vec[0] if vec else "absent",
           "redis": str(info.get("redis_version"))}
    for dist in ("starlette", "uvicorn", "psycopg", "redis", "pydantic", "httpx", "pyjwt", "boto3"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    prof = dict(PROFILES["quick" if args.quick else "full"])
    if args.users:
        prof["users"] = args.users
    skip = set(filter(None, (args.skip or "").split(",")))
    started = time.perf_counter()
    rng = random.Random(7)
    out: dict[str, Any] = {"profile": "quick" if args.quick else "full", "settings": prof, "workers": args.workers,
                           "machine": harness.machine(), "command": args.command_line,
                           "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    SERVER_LOG.unlink(missing_ok=True)
    with harness.services() as svc, fleet.s3() as s3, fleet.providers() as prov:
        dsn = prepare(svc.admin_dsn, prof["users"])
        out["versions"] = versions(dsn, svc.redis_url)
        out["dataset"] = dataset_counts(dsn)
        from bench import webhooks as wb

        f = fleet.Fleet.configure(dsn, svc.redis_url, s3=s3, providers=prov, PAYSTACK_SECRET_KEY=wb.PAYSTACK_SECRET,
                                  REVENUECAT_WEBHOOK_AUTH=wb.RC_AUTH, EDGEFN_ACCESS_LOG="1",
                                  BATCH_WINDOW_SECONDS="5", PUSH_DAILY_CAP="1000000",
                                  # a paid Realtime plan's pace (the default, 100/s, is the free plan's: at
                                  # 100 events/s the pacer, not the function, would set the latency)
                                  REALTIME_MESSAGES_PER_SECOND="2500")
        world = make_world(dsn, f, 1000 if args.quick else 5000)
        top = max(prof["rates"]) * prof["step"]
        kinds = ("dashboard_hit", "dashboard_miss", "deck", "swipe", "presign", "webhook", "ingest")
        pools = {k: pool(k, world, int(top), rng) for k in kinds}
        pools["floor"] = pool("floor", world, 1, rng)
        # the mix asks dashboards as users do: mostly the cached one
        pools["dashboard"] = pools["dashboard_hit"][: len(pools["dashboard_hit"]) * 4 // 5] + pools["dashboard_miss"][-len(pools["dashboard_hit"]) // 5:]

        # 1. per function, open loop, rising rate
        ladders: dict[str, list[Step]] = {}
        if "ladder" not in skip:
            log(f"-- open-loop ladders ({args.workers} workers, {prof['step']:.0f} s per step)")
            with fleet_server(f, args.workers) as (port, pid):
                warm(port, pools["dashboard_hit"])
                for kind in ("floor", *kinds):
                    if kind in SIGNED_WITH_TIME:  # signatures carry a timestamp: made just before use
                        pools[kind] = pool(kind, world, int(top), rng)
                    ladders[kind] = ladder(kind, port, pid, pools[kind], prof["rates"], prof["step"])
                    settle(port, dsn)
            with naive_server(f, args.workers) as (port, pid):
                warm(port, pools["dashboard_hit"])
                for kind in ("dashboard_hit", "dashboard_miss"):
                    ladders[f"{kind} (naive)"] = ladder(f"{kind} (naive)", port, pid, pools[kind], prof["rates"], prof["step"])
        out["ladders"] = {k: [vars(s) for s in v] for k, v in ladders.items()}

        # 2. the realistic mix, open loop
        mix_steps = []
        if "mix" not in skip:
            log("-- realistic mix, open loop")
            kinds = list(MIX)
            for kind in SIGNED_WITH_TIME:
                pools[kind] = pool(kind, world, int(top), rng)
            labels = rng.choices(kinds, weights=[MIX[k] for k in kinds], k=int(max(prof["mix_rates"]) * prof["step"]))
            cursor = dict.fromkeys(kinds, 0)
            reqs = []
            for k in labels:
                reqs.append(pools[k][cursor[k] % len(pools[k])])
                cursor[k] += 1
            with fleet_server(f, args.workers) as (port, pid):
                asyncio.run(open_loop(HOST, port, reqs[:200], rate=100, duration=1.0))
                for rate in prof["mix_rates"]:
                    n = int(rate * prof["step"])
                    step, res = run_step(port, pid, reqs[:n], rate, prof["step"], labels=labels[:n])
                    per = {k: r.summary() for k, r in sorted(res.by_label.items())}
                    mix_steps.append({**vars(step), "by_kind": per})
                    s = step.summary
                    log(f"  mix {rate:>5.0f}/s  p50 {s['p50_ms']:.2f}  p95 {s['p95_ms']:.2f}  p99 {s['p99_ms']:.2f} ms"
                        f"  cpu {step.cpu_ms:.2f} ms/req  non-2xx {s['non_2xx']}")
        out["mix"] = mix_steps

        # 3. throughput against worker count (closed loop, the mix)
        scaling = []
        if "workers" not in skip:
            log("-- throughput against worker count (closed loop, 32 connections, the mix)")
            for kind in SIGNED_WITH_TIME:
                pools[kind] = pool(kind, world, int(top), rng)
            mixed = [pools[k][i % len(pools[k])] for i, k in enumerate(rng.choices(list(MIX), weights=list(MIX.values()), k=4000))]
            for w in prof["workers"]:
                with fleet_server(f, w) as (port, pid):
                    asyncio.run(closed_loop(HOST, port, mixed, connections=16, duration=1.0, warmup=0.5))
                    cpu0 = harness.cpu_seconds(pid)
                    res = asyncio.run(closed_loop(HOST, port, mixed, connections=32, duration=prof["step"], warmup=0.5))
                    cpu = (harness.cpu_seconds(pid) - cpu0) * 1000 / max(1, res.count)
                scaling.append({"workers": w, **res.summary(), "cpu_ms": round(cpu, 2)})
                log(f"  {w} workers: {res.rps:.0f} req/s, p95 {res.pct(95):.1f} ms")
        out["scaling"] = scaling

        # 4. cold import per function
        if "cold" not in skip:
            log("-- cold import per function")
            from bench import cold_start

            out["cold_start"] = cold_start.run(prof["cold_runs"])

        # 5. faults and 6. fuzzing (pytest suites, on the same services)
        suite_env = {"DATABASE_URL": svc.admin_dsn, "REDIS_URL": svc.redis_url}
        if "faults" not in skip:
            log(f"-- fault suite (outages of {prof['fault_seconds']} s)")
            out["faults"] = run_pytest_suite("faults", "tests/faults", {**suite_env, "EDGEFN_FAULT_SECONDS": str(prof["fault_seconds"])},
                                             "EDGEFN_FAULTS_REPORT", timeout=900)
            log(f"  {out['faults']['summary']}")
        if "fuzz" not in skip:
            log("-- fuzzing every route")
            out["fuzz"] = run_pytest_suite("fuzz", "tests/fuzz", {**suite_env, "EDGEFN_FUZZ_EXAMPLES": str(prof["fuzz_examples"])},
                                           "EDGEFN_FUZZ_REPORT", timeout=900)
            log(f"  {out['fuzz']['summary']}")

        # 7. each function's own benchmark (full run only)
        if prof["function_benches"] and "functions" not in skip:
            out["function_benches"] = {}
            for name in FUNCTION_BENCHES:
                log(f"-- bench.{name}")
                out["function_benches"][name] = run_function_bench(name, suite_env)
    out["server_5xx"] = server_errors()
    out["capacity"] = capacity(out)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


# -- capacity --------------------------------------------------------------------------------


def capacity(out: dict[str, Any]) -> dict[str, Any]:
    """Per function: the sustained rate here and the CPU per request; from those, vCPUs and
    Lambda concurrency for 10,000 requests per second of the mix and for 100K MAU."""
    ladders = out.get("ladders", {})

    def figures(kind: str) -> dict[str, float] | None:
        steps = [Step(**s) for s in ladders.get(kind, [])]
        if not steps:
            return None
        best = sustained(steps)
        counted = [s for s in steps if s.ok] or steps
        cpus = sorted(s.cpu_ms for s in counted if s.summary["requests"] and not math.isnan(s.cpu_ms))
        return {"sustained_rps": best.rate if best else 0.0, "cpu_ms": cpus[len(cpus) // 2] if cpus else float("nan"),
                "p50_ms": (best or steps[0]).summary["p50_ms"]}

    rows: dict[str, dict[str, float]] = {}
    for kind in MIX:
        parts = {kind: 1.0} if kind != "dashboard" else DASHBOARD_HIT_MISS
        got = {k: figures(k) for k in parts}
        if any(v is None for v in got.values()):
            continue
        cpu_ms = sum(w * got[k]["cpu_ms"] for k, w in parts.items())  # type: ignore[index]
        rows[kind] = {
            "sustained_rps": min(got[k]["sustained_rps"] for k in parts),  # type: ignore[index]
            "cpu_ms": round(cpu_ms, 2),
            "p50_ms": round(sum(w * got[k]["p50_ms"] for k, w in parts.items()), 2),  # type: ignore[index]
            "per_vcpu_rps": round(1000 / cpu_ms * TARGET_UTILISATION, 1) if cpu_ms else 0.0,
        }

    def need(rps_by_kind: dict[str, float]) -> dict[str, Any]:
        vcpus = sum(rps * rows[k]["cpu_ms"] / 1000 / TARGET_UTILISATION for k, rps in rps_by_kind.items() if k in rows)
        conc = sum(rps * rows[k]["p50_ms"] / 1000 for k, rps in rps_by_kind.items() if k in rows)
        return {"rps": round(sum(rps_by_kind.values()), 1), "vcpus": math.ceil(vcpus),
                "lambda_concurrency": math.ceil(conc * 1.5),  # 1.5: headroom over Little's law at p50
                "by_kind": {k: round(v, 1) for k, v in rps_by_kind.items()}}

    dau = 100_000 * DAU_SHARE
    mau_rps = {k: dau * n / 86_400 * PEAK_FACTOR for k, n in PER_DAU_PER_DAY.items()}
    return {"functions": rows, "10k_rps": need({k: 10_000 * s for k, s in MIX.items()}) if rows else {},
            "100k_mau": need(mau_rps) if rows else {},
            "model": {"dau_share": DAU_SHARE, "peak_factor": PEAK_FACTOR, "per_dau_per_day": PER_DAU_PER_DAY,
                      "utilisation": TARGET_UTILISATION, "mix": MIX}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgefn bench", description=(__doc__ or "").splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return run_cli(args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="2,000 users, short steps: about 2.5 minutes")
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    p.add_argument("--users", type=int, default=0, help="override the profile's seeded users")
    p.add_argument("--skip", default="", help="comma-separated: ladder,mix,workers,cold,faults,fuzz,functions")
    p.add_argument("--out", default=str(ROOT / "bench" / "report.md"), help="the report (plots go beside it, in plots/)")
    p.add_argument("--json", action="store_true", help="also write the raw figures next to the report")


def run_cli(args: argparse.Namespace, command_line: str | None = None) -> int:
    from bench import report

    args.command_line = command_line or " ".join(["edgefn bench", *sys.argv[2:]]).strip()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("edgefn bench needs matplotlib for its plots: pip install -e '.[bench]'")
        return 2
    data = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report.write(data, out)
    if args.json:
        out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
    log(f"report: {out} ({data['seconds']:.0f} s)")
    failed = [k for k in ("faults", "fuzz") if k in data and data[k]["exit"] != 0]
    if failed:
        log(f"FAILED: {', '.join(failed)} (see the report)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
