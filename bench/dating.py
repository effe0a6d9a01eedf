"""Dating benchmark: batch-swipe and recommendations over HTTP on the seeded 100,000-profile
dataset (64-d embeddings, ~2,000,000 swipes), against real Postgres and Redis.

    python -m bench.dating [--users 100000] [--connections 2] [--rounds 3] [--json]

Run it on a PostgreSQL WITH pgvector: without DATABASE_URL the harness starts the embedded
PostgreSQL 16, which has it (and seeds it, about 3 minutes); with DATABASE_URL the seeded
database `edgefn_bench_dating` is kept and reused while its marker says the same user count.

Prints, per scenario, p50 / p95 / p99 latency and the Postgres and Redis round trips per
request:
  (a) one batch-swipe request of 50 swipes (about half likes), each by another user
      (goal: p95 <= 25 ms, 1 Postgres round trip),
  (b) the same 50 swipes as 50 single-swipe requests, in the same run (interleaved rounds);
      the ratio of 50 single requests' total time to one batch,
  (c) a deck of 50 within 50 km, cache miss (each request another user) (goal: p95 <= 50 ms),
  (d) the same decks again: cache hits (goal: p95 <= 3 ms),
  (e) for information, decks without a distance filter (a large candidate set: the HNSW path),
and EXPLAIN (ANALYZE, BUFFERS) of the candidate query of one deck, also written to
bench/out/dating_explain.txt. Rows the run writes (swipes, matches, events, idempotency
records) are deleted afterwards, so runs stay comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import harness
from bench.loadgen import Connection, build_request
from edgefn.tokens import _new_private_jwk, mint, public_jwks

DB_NAME = "edgefn_bench_dating"
ISSUER = "http://127.0.0.1/auth/v1"
OUT = harness.ROOT / "bench" / "out" / "dating_explain.txt"
SWIPE_PATH = "/functions/v1/batch-swipe"
DECK_PATH = "/functions/v1/recommendations"


# -- data ------------------------------------------------------------------------------------


def prepare(admin_dsn: str, users: int, log: Any) -> str:
    """The seeded database (kept between runs)."""
    from edgefn.seed import seed

    dsn = harness.kept_database(admin_dsn, DB_NAME, log)
    started = time.perf_counter()
    seed(dsn, users, log=lambda m: log(f"  seed: {m}"))
    log(f"dataset ready in {time.perf_counter() - started:.1f} s")
    return dsn


def sample(dsn: str, n: int, rng_seed: int) -> list[dict[str, Any]]:
    """`n` distinct visible users with a location, in a random (seeded) order."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select id::text, lat, lon, interested_in from public.profiles"
            " where deleted_at is null and not hidden and lat is not null and birthdate is not null"
            " order by md5(id::text || %s) limit %s",
            (str(rng_seed), n),
        ).fetchall()
    return [{"id": r[0], "lat": r[1], "lon": r[2], "wants": r[3]} for r in rows]


def targets_for(dsn: str, users: list[dict[str, Any]], k: int) -> dict[str, list[str]]:
    """For each user, `k` visible people nearby whom they have not swiped yet."""
    import psycopg

    out: dict[str, list[str]] = {}
    with psycopg.connect(dsn) as conn:
        for u in users:
            rows = conn.execute(
                "select p.id::text from public.profiles p"
                " where p.deleted_at is null and not p.hidden and p.id <> %s"
                "   and p.lat between %s - 0.5 and %s + 0.5 and p.lon between %s - 0.5 and %s + 0.5"
                "   and not exists (select 1 from public.swipes s where s.swiper_id = %s and s.target_id = p.id)"
                " order by md5(p.id::text || %s) limit %s",
                (u["id"], u["lat"], u["lat"], u["lon"], u["lon"], u["id"], u["id"], k),
            ).fetchall()
            out[u["id"]] = [r[0] for r in rows]
    return out


def cleanup(dsn: str, since: datetime, ids: list[str]) -> dict[str, int]:
    """Delete what the run wrote (every swipe it made was an insert: targets were unswiped)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        counts = {}
        for table, sql in (
            ("swipes", "delete from public.swipes where swiper_id = any(%s::uuid[]) and created_at >= %s"),
            ("matches", "delete from public.matches where (user_a = any(%s::uuid[]) or user_b = any(%s::uuid[])) and created_at >= %s"),
            ("outbox", "delete from public.outbox where event_type = 'match.created' and recipients && %s::uuid[] and created_at >= %s"),
            ("swipe_requests", "delete from public.swipe_requests where user_id = any(%s::uuid[]) and created_at >= %s"),
        ):
            params = (ids, ids, since) if table == "matches" else (ids, since)
            counts[table] = conn.execute(sql, params).rowcount
    return counts


# -- EXPLAIN -----------------------------------------------------------------------------------


def explain(dsn: str, user: str, max_distance_km: float | None) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the deck's candidate query, as `public.deck` runs it for
    `user` (it reports its plans as notices when the session sets edgefn.deck_explain): as
    the service role with the user's claims, as the recommendations function calls it."""
    import psycopg

    lines: list[str] = []
    with psycopg.connect(dsn) as conn:
        conn.add_notice_handler(lambda d: lines.append(d.message_primary or ""))
        with conn.transaction():
            conn.execute("set local edgefn.deck_explain = on")
            conn.execute(
                "select set_config('role', 'service_role', true), set_config('request.jwt.claims', %s, true)",
                (json.dumps({"sub": user, "role": "authenticated"}),),
            )
            started = time.perf_counter()
            rows = conn.execute("select strategy from public.deck(51, null, null, null, %s)", (max_distance_km,)).fetchall()
            ms = (time.perf_counter() - started) * 1000
    head = (
        f"-- public.deck(limit 51, max_distance_km={max_distance_km}) for user {user}: {len(rows)} rows, "
        f"strategy {rows[0][0] if rows else '-'}; whole call {ms:.1f} ms including EXPLAIN ANALYZE's own run"
    )
    return "\n".join([head, *lines])


# -- HTTP ---------------------------------------------------------------------------------------


async def drive(port: int, jobs: list[list[bytes]], connections: int) -> dict[str, Any]:
    """Run `jobs` (each a list of requests sent one after another on one connection) over
    `connections` keep-alive connections; latency of every request and total per job."""
    queue: asyncio.Queue[list[bytes]] = asyncio.Queue()
    for j in jobs:
        queue.put_nowait(j)
    lat: list[float] = []
    per_job: list[float] = []
    statuses: dict[int, int] = {}
    meta: dict[str, int] = {}

    async def worker() -> None:
        conn = Connection("127.0.0.1", port)
        try:
            while not queue.empty():
                job = queue.get_nowait()
                t_job = time.perf_counter()
                for raw in job:
                    t0 = time.perf_counter()
                    status, body = await conn.send(raw)
                    lat.append((time.perf_counter() - t0) * 1000)
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200 and body:
                        doc = json.loads(body)
                        for key in ("ranking", "cache_status"):
                            v = doc.get("metadata", {}).get(key)
                            if v:
                                meta[f"{key}={v}"] = meta.get(f"{key}={v}", 0) + 1
                per_job.append((time.perf_counter() - t_job) * 1000)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return {"latencies": lat, "per_job": per_job, "statuses": statuses, "meta": meta}


def stats(port: int) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{port}/stats").json()  # type: ignore[no-any-return]


def pct(values: list[float], p: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    return data[min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))]


def run_http(dsn: str, redis_url: str, connections: int, rounds: int, per_round: int, log: Any) -> dict[str, Any]:
    key = _new_private_jwk()
    prefix = "bench:dating:" + secrets.token_hex(4)
    env = {
        "DATABASE_URL": dsn, "REDIS_URL": redis_url, "KEY_PREFIX": prefix, "JWT_ISSUER": ISSUER,
        "SUPABASE_JWKS": json.dumps(public_jwks(key)), "REDIS_TIMEOUT_MS": "1000",
    }
    run_seed = int(time.time())
    # per round: per_round batch users, per_round // 5 single-swipe users, per_round deck
    # users within 50 km, per_round // 2 without a distance filter; plus warm-up users
    need = rounds * (per_round * 2 + per_round // 5 + per_round // 2) + 30
    pool = sample(dsn, need, run_seed)
    log(f"sampled {len(pool)} users; choosing swipe targets ...")
    it = iter(pool)

    def take(n: int) -> list[dict[str, Any]]:
        return [next(it) for _ in range(n)]

    plan = []
    for _ in range(rounds):
        plan.append({
            "batch": take(per_round), "single": take(per_round // 5),
            "deck": take(per_round), "global": take(per_round // 2),
        })
    warm = take(30)
    swipers = [u for r in plan for u in r["batch"] + r["single"]] + warm[:10]
    targets = targets_for(dsn, swipers, 50)
    rng = random.Random(run_seed)
    actions = {u: [("like" if rng.random() < 0.55 else "pass") for _ in range(50)] for u in targets}
    tokens = {u["id"]: mint(key, user_id=u["id"], tier="free", issuer=ISSUER) for u in pool}
    _set_tiers(redis_url, prefix, [u["id"] for u in pool])
    started_at = datetime.now(UTC)

    def swipe_req(host: str, uid: str, items: list[tuple[str, str]]) -> bytes:
        body = json.dumps({"swipes": [{"target_id": t, "action": a} for t, a in items]}).encode()
        return build_request("POST", SWIPE_PATH, host, {"Authorization": f"Bearer {tokens[uid]}", "Content-Type": "application/json"}, body)

    def deck_req(host: str, uid: str, distance: float | None) -> bytes:
        q = "?limit=50" + (f"&max_distance_km={distance:g}" if distance else "")
        return build_request("GET", DECK_PATH + q, host, {"Authorization": f"Bearer {tokens[uid]}"})

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("batch", "single", "deck_miss", "deck_hit", "deck_global_miss")}
    with harness.server("bench.apps.dating_app:app", env, ready_path="/stats") as port:
        host = f"127.0.0.1:{port}"

        def measure(name: str, jobs: list[list[bytes]]) -> None:
            before = stats(port)
            res = asyncio.run(drive(port, jobs, connections))
            after = stats(port)
            n = max(len(res["latencies"]), 1)
            res["db_per_request"] = (after["db"] - before["db"]) / n
            res["kv_per_request"] = (after["kv"] - before["kv"]) / n
            runs[name].append(res)

        # warm-up (not counted): pools, JWKS, plans, the server's imports
        w_swipe = [[swipe_req(host, u["id"], list(zip(targets[u["id"]][:10], actions[u["id"]][:10], strict=False)))] for u in warm[:10]]
        asyncio.run(drive(port, w_swipe + [[deck_req(host, u["id"], 50)] for u in warm[10:]], connections))
        for i, r in enumerate(plan):
            log(f"round {i + 1}/{rounds}")
            measure("batch", [[swipe_req(host, u["id"], list(zip(targets[u["id"]], actions[u["id"]], strict=False)))] for u in r["batch"]])
            measure("single", [[swipe_req(host, u["id"], [(t, a)]) for t, a in zip(targets[u["id"]], actions[u["id"]], strict=False)]
                               for u in r["single"]])
            decks = [[deck_req(host, u["id"], 50)] for u in r["deck"]]
            measure("deck_miss", decks)
            measure("deck_hit", decks)
            measure("deck_global_miss", [[deck_req(host, u["id"], None)] for u in r["global"]])
    counts = cleanup(dsn, started_at, [u["id"] for u in pool])
    _drop_keys(redis_url, prefix)
    return {"runs": runs, "cleanup": counts}


def _set_tiers(redis_url: str, prefix: str, ids: list[str]) -> None:
    """Returning users have their tier in Redis (the limiter's key): measure that steady
    state, not a first request's background tier write."""
    import redis

    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for uid in ids:
        pipe.set(f"{prefix}:tier:{{{uid}}}", "free", ex=3600)
    pipe.execute()
    client.close()


def _drop_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for k in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(k)
    client.close()


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        lat = [x for r in rs for x in r["latencies"]]
        per_round_p95 = [round(pct(r["latencies"], 95), 2) for r in rs]
        statuses: dict[str, int] = {}
        meta: dict[str, int] = {}
        for r in rs:
            for s, c in r["statuses"].items():
                statuses[str(s)] = statuses.get(str(s), 0) + c
            for m, c in r["meta"].items():
                meta[m] = meta.get(m, 0) + c
        out[name] = {
            "requests": len(lat),
            "p50_ms": round(pct(lat, 50), 2), "p95_ms": round(pct(lat, 95), 2), "p99_ms": round(pct(lat, 99), 2),
            "p95_by_round": per_round_p95,
            "median_round_p95_ms": round(statistics.median(per_round_p95), 2),
            "postgres_round_trips_per_request": round(statistics.median(r["db_per_request"] for r in rs), 3),
            "redis_round_trips_per_request": round(statistics.median(r["kv_per_request"] for r in rs), 3),
            "statuses": statuses, "metadata": meta,
        }
    singles = [x for r in runs["single"] for x in r["per_job"]]
    batches = [x for r in runs["batch"] for x in r["latencies"]]
    out["single"]["fifty_requests_p50_ms"] = round(pct(singles, 50), 2)
    out["single"]["fifty_requests_p95_ms"] = round(pct(singles, 95), 2)
    out["ratio_50_singles_over_batch_p50"] = round(pct(singles, 50) / pct(batches, 50), 1)
    return out


def render(report: dict[str, Any]) -> str:
    s = report["summary"]
    names = {
        "batch": "(a) batch of 50 swipes",
        "single": "(b) single-swipe request",
        "deck_miss": "(c) deck of 50 within 50 km, cache miss",
        "deck_hit": "(d) same deck, cache hit",
        "deck_global_miss": "(e) deck of 50, no distance filter, miss",
    }
    goals = {"batch": "p95 <= 25", "deck_miss": "p95 <= 50", "deck_hit": "p95 <= 3"}
    lines = [f"dating benchmark: {report['machine']}", report["note"], ""]
    lines.append(f"{'scenario':<44}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'PG rt':>7}{'Redis rt':>9}   goal / rounds' p95")
    for key, label in names.items():
        r = s[key]
        rounds = "/".join(f"{x:.1f}" for x in r["p95_by_round"])
        lines.append(
            f"{label:<44}{r['requests']:>6}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['postgres_round_trips_per_request']:>7.2f}{r['redis_round_trips_per_request']:>9.2f}   "
            f"{goals.get(key, '-')} / {rounds}"
        )
    lines += [
        "",
        f"50 single-swipe requests, one after another: p50 {s['single']['fifty_requests_p50_ms']:.1f} ms, "
        f"p95 {s['single']['fifty_requests_p95_ms']:.1f} ms; one batch of 50: p50 {s['batch']['p50_ms']:.1f} ms "
        f"-> 50 singles / 1 batch = {s['ratio_50_singles_over_batch_p50']:.1f}x",
        "statuses: " + ", ".join(f"{k} {v['statuses']}" for k, v in s.items() if isinstance(v, dict) and "statuses" in v),
        "deck metadata: " + ", ".join(f"{k} {s[k]['metadata']}" for k in ("deck_miss", "deck_hit", "deck_global_miss")),
        f"rows written by the run and deleted afterwards: {report['cleanup']}",
        "",
        f"EXPLAIN (ANALYZE, BUFFERS) of the candidate query (also in {OUT.relative_to(harness.ROOT)}):",
        report["explain"],
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=100_000, help="seeded users (default 100,000)")
    p.add_argument("--connections", type=int, default=2, help="concurrent keep-alive connections")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-round", type=int, default=100, help="batch requests and decks per round")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        if not args.json:
            print(msg, flush=True)

    with harness.services() as svc:
        dsn = prepare(svc.admin_dsn, args.users, log)
        import psycopg

        with psycopg.connect(dsn) as conn:
            vector = bool(conn.execute("select public.has_pgvector()").fetchone()[0])  # type: ignore[index]
            version = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
        if not vector:
            log("WARNING: this PostgreSQL has no pgvector: the decks are ranked by the plain SQL path "
                "(run without DATABASE_URL for the embedded PostgreSQL 16, which has it)")
        http = run_http(dsn, svc.redis_url, args.connections, args.rounds, args.per_round, log)
        who = sample(dsn, 1, 7)[0]["id"]
        plan_text = explain(dsn, who, 50.0) + "\n\n" + explain(dsn, who, None)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(plan_text + "\n")
    report = {
        "machine": harness.machine(),
        "note": (
            f"PostgreSQL {version}, pgvector {'yes' if vector else 'NO'}; {args.users:,} seeded profiles; one uvicorn worker "
            f"serving both functions, JSON access log on; {args.connections} keep-alive connections, {args.rounds} "
            f"interleaved rounds of {args.per_round} batches / {args.per_round // 5} x 50 single swipes / "
            f"{args.per_round} decks / {args.per_round // 2} global decks, every request another user; load generator on the same machine"
        ),
        "summary": summarize(http["runs"]),
        "cleanup": http["cleanup"],
        "explain": plan_text,
    }
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
