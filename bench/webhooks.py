"""Webhooks benchmark: signed Paystack and RevenueCat deliveries against the function served
by uvicorn, with real Postgres and Redis.

    python -m bench.webhooks [--duration 3] [--rounds 3] [--connections 16] [--rates 20,100] [--json]

Scenarios, interleaved over `--rounds` rounds (median round reported), closed loop:

- (0) baseline: `GET /health` of the same function (no I/O): the process's ceiling;
- (0') one service-role statement through the function's own pool: the cost of any
  request that touches the database once;
- (a) valid: every request a new delivery (half Paystack `charge.success` with a price
  check, half RevenueCat INITIAL_PURCHASE/RENEWAL), each one transaction storing the raw
  delivery, the subscription, the tier, the outbox event, plus the Redis tier write;
- (b) duplicate: deliveries already stored (a provider's retries);
- (c) badly signed: wrong HMAC / wrong Authorization (refused before any I/O).

Then the latency of valid deliveries in an open loop at each of `--rates` per second (a
provider's pace, not saturation), measured client side and server side (inside the
process, around the ASGI app: what the function spends; the target is p95 under 20 ms).

Then (d) history: the cost of a NEW delivery on a subscription that already has 50
recorded events (a Paystack subscription with its first charge, subscription.create and 48
paid renewal invoices; a RevenueCat purchase with 50 RENEWALs), at `--history-rate` per
second (open loop, 50 by default), server side p50/p95, next to the same run's baseline: a
new delivery on a fresh subscription (a first charge / INITIAL_PURCHASE) at the same rate.
The goal is p95 <= 20 ms. `--history-only` runs only this part (how the README's
before/after figures were taken: the same file run in a checkout of the older code).

Prints deliveries per second, p50/p95/p99, the ratio of each scenario to the baseline, and
the outcome counts found in the database (valid ones must all be `applied`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench import harness
from bench.loadgen import build_request, closed_loop, open_loop

BASE = "/functions/v1/webhooks"
PAYSTACK_SECRET = "sk_test_bench_" + "5a" * 16
RC_AUTH = "Bearer rc-bench-" + "c3" * 12
PLAN_CODE = "bench_pro_monthly"
PAYSTACK_PLAN = "PLN_benchmonthly01"
AMOUNT = 200000
DB_NAME = "edgefn_bench_webhooks"


# -- the server side: the function wrapped by a timer ------------------------------------


class TimedApp:
    """The webhooks ASGI app, timed from the call to the last byte sent; `GET /bench-stats`
    answers the durations of POSTs since the last call (and forgets them)."""

    def __init__(self) -> None:
        self.app: Any = None
        self.samples: list[float] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.app is None:
            from functions.webhooks.handler import app

            self.app = app
        if scope["type"] == "http" and scope["path"] == "/bench-db":
            # baseline: one service-role statement through the function's own pool (1 round trip)
            await self.app.services.db.fetch("select 1 as ok", service=True)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if scope["type"] == "http" and scope["path"] == "/bench-stats":
            body = json.dumps(self.samples).encode()
            self.samples = []
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        started = time.perf_counter()
        await self.app(scope, receive, send)
        if scope["type"] == "http" and scope.get("method") == "POST":
            self.samples.append((time.perf_counter() - started) * 1000)


timed_app = TimedApp()


# -- payloads ---------------------------------------------------------------------------------


class Deliveries:
    """Distinct, correctly signed deliveries for `users` (alternating providers)."""

    def __init__(self, users: list[str]) -> None:
        self.users = users
        self.n = 0
        self.t0 = datetime.now(UTC) - timedelta(days=1)

    def _paystack(self, user: str, i: int) -> tuple[str, bytes, dict[str, str]]:
        paid = self.t0 + timedelta(milliseconds=i)
        body = {"event": "charge.success", "data": {
            "id": i, "domain": "test", "status": "success", "reference": f"BENCH-{uuid.uuid4().hex}",
            "amount": AMOUNT, "currency": "NGN", "gateway_response": "Successful", "channel": "card",
            "paid_at": paid.isoformat().replace("+00:00", "Z"), "created_at": paid.isoformat().replace("+00:00", "Z"),
            "metadata": {"user_id": user, "plan": PLAN_CODE},
            "customer": {"id": i, "email": f"{user}@bench.example", "customer_code": f"CUS_{user[:13]}"},
            "plan": {"plan_code": PAYSTACK_PLAN, "amount": AMOUNT, "currency": "NGN", "interval": "monthly"},
            "authorization": {"authorization_code": "AUTH_bench", "last4": "4081", "reusable": True},
        }}
        raw = json.dumps(body).encode()
        sig = hmac.new(PAYSTACK_SECRET.encode(), raw, hashlib.sha512).hexdigest()
        return f"{BASE}/paystack", raw, {"x-paystack-signature": sig}

    def _revenuecat(self, user: str, i: int) -> tuple[str, bytes, dict[str, str]]:
        at = self.t0 + timedelta(milliseconds=i)
        body = {"api_version": "1.0", "event": {
            "id": str(uuid.uuid4()), "type": "INITIAL_PURCHASE" if i < 2 * len(self.users) else "RENEWAL",
            "event_timestamp_ms": int(at.timestamp() * 1000), "app_user_id": user, "original_app_user_id": user,
            "aliases": [f"$RCAnonymousID:{user.replace('-', '')}"], "product_id": "com.bench.monthly",
            "entitlement_ids": ["pro"], "period_type": "NORMAL", "environment": "PRODUCTION", "store": "APP_STORE",
            "purchased_at_ms": int(at.timestamp() * 1000),
            "expiration_at_ms": int((at + timedelta(days=31)).timestamp() * 1000),
            "transaction_id": f"tx-{i}", "original_transaction_id": f"otx-{user}", "currency": "USD", "price": 4.99,
        }}
        return f"{BASE}/revenuecat", json.dumps(body).encode(), {"authorization": RC_AUTH}

    def next(self) -> tuple[str, bytes, dict[str, str]]:
        i = self.n
        self.n += 1
        user = self.users[(i // 2) % len(self.users)]
        return self._paystack(user, i) if i % 2 == 0 else self._revenuecat(user, i)

    def requests(self, host: str, count: int) -> tuple[list[bytes], list[tuple[str, bytes, dict[str, str]]]]:
        made = [self.next() for _ in range(count)]
        return [build_request("POST", p, host, {"content-type": "application/json", **h}, b) for p, b, h in made], made


def bad_requests(host: str, made: list[tuple[str, bytes, dict[str, str]]]) -> list[bytes]:
    out = []
    for path, body, headers in made:
        if "x-paystack-signature" in headers:
            headers = {"x-paystack-signature": "0" * 128}
        else:
            headers = {"authorization": "Bearer wrong"}
        out.append(build_request("POST", path, host, {"content-type": "application/json", **headers}, body))
    return out


async def send_all(port: int, requests: list[bytes], connections: int) -> Counter[int]:
    """Send each request exactly once, over `connections` keep-alive connections."""
    from bench.loadgen import Connection

    statuses: Counter[int] = Counter()

    async def worker(share: list[bytes]) -> None:
        conn = Connection("127.0.0.1", port)
        try:
            for raw in share:
                status, _ = await conn.send(raw)
                statuses[status] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker(requests[i::connections]) for i in range(connections)))
    return statuses


# -- setup ------------------------------------------------------------------------------------


def prepare(dsn: str, users: int) -> list[str]:
    """Bench users (auth.users + user_tiers, free) and the bench plan."""
    import psycopg

    ids = [str(uuid.uuid4()) for _ in range(users)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into public.subscription_plans (code, provider, tier, amount_minor, currency, interval, provider_plan_code, active) "
            "values (%s, 'paystack', 'paid', %s, 'NGN', 'monthly', %s, false) on conflict (code) do nothing",
            (PLAN_CODE, AMOUNT, PAYSTACK_PLAN),
        )
        with conn.cursor() as cur, cur.copy("copy auth.users (id, email) from stdin") as copy:
            for u in ids:
                copy.write_row((u, f"{u}@bench.example"))
        with conn.cursor() as cur, cur.copy("copy public.user_tiers (user_id, tier, source) from stdin") as copy:
            for u in ids:
                copy.write_row((u, "free", "bench"))
    return ids


def outcomes(dsn: str, since: datetime) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select outcome, count(*) from public.webhook_deliveries where received_at >= %s group by outcome", (since,)
        ).fetchall()
    return {str(o): int(n) for o, n in rows}


# -- the run ----------------------------------------------------------------------------------


def run(admin_dsn: str, redis_url: str, duration: float, rounds: int, connections: int, rates: list[float],
        users: int) -> dict[str, Any]:
    # a fresh database per run (no seed to reuse: the users are made here), dropped after
    with harness.scratch_database(admin_dsn, f"{DB_NAME}_{secrets.token_hex(4)}") as dsn:
        ids = prepare(dsn, users)
        env = {
            "DATABASE_URL": dsn,
            "REDIS_URL": redis_url,
            "KEY_PREFIX": "bench:" + secrets.token_hex(4),
            "PAYSTACK_SECRET_KEY": PAYSTACK_SECRET,
            "REVENUECAT_WEBHOOK_AUTH": RC_AUTH,
            "REDIS_TIMEOUT_MS": "1000",
        }
        started_at = datetime.now(UTC)
        with harness.server("bench.webhooks:timed_app", env, ready_path=f"{BASE}/health") as port:
            host = f"127.0.0.1:{port}"
            gen = Deliveries(ids)
            per_round = int(duration * 2500) + 200
            # warm-up (not counted): pools, the first statements, the script cache
            warm, _ = gen.requests(host, 400)
            asyncio.run(closed_loop("127.0.0.1", port, warm, connections=connections, duration=1.0, warmup=0))
            duplicates, made = gen.requests(host, 1000)
            statuses = asyncio.run(send_all(port, duplicates, connections))
            assert statuses == Counter({200: len(duplicates)}), statuses  # stored: from now on, every one a duplicate
            health = [build_request("GET", f"{BASE}/health", host)]
            one_query = [build_request("GET", "/bench-db", host)]
            bad = bad_requests(host, made)
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("baseline", "db", "valid", "duplicate", "bad")}
            valid_sent = 0
            for _ in range(rounds):
                valid, _ = gen.requests(host, per_round)
                for name, reqs in (("baseline", health), ("db", one_query), ("valid", valid), ("duplicate", duplicates),
                                   ("bad", bad)):
                    httpx.get(f"http://{host}/bench-stats")
                    res = asyncio.run(closed_loop("127.0.0.1", port, reqs, connections=connections, duration=duration, warmup=0))
                    server = sorted(httpx.get(f"http://{host}/bench-stats").json())
                    s = res.summary()
                    s["statuses"] = dict(Counter({str(k): v for k, v in res.statuses.items()}))
                    if server and name not in ("baseline", "db"):
                        s["server_p95_ms"] = round(server[int(0.95 * (len(server) - 1))], 2)
                    if name == "valid":
                        valid_sent += res.count
                        s["unique"] = res.count <= per_round
                    runs[name].append(s)
            # latency at a provider's pace (open loop), client and server side
            paced_runs = []
            for r in rates:
                paced, _ = gen.requests(host, int(r * duration * 2) + 10)
                httpx.get(f"http://{host}/bench-stats")
                lat = asyncio.run(open_loop("127.0.0.1", port, paced, rate=r, duration=duration * 2))
                server = sorted(httpx.get(f"http://{host}/bench-stats").json())
                summary = lat.summary()
                summary.update(rate=r, server_p50_ms=pct(server, 50), server_p95_ms=pct(server, 95),
                               server_p99_ms=pct(server, 99))
                paced_runs.append(summary)
        counts = outcomes(dsn, started_at)

    results = {}
    for name, rs in runs.items():
        median = sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
        median["rps_rounds"] = [r["rps"] for r in rs]
        results[name] = median
    base, db = results["baseline"]["rps"], results["db"]["rps"]
    for name in ("db", "valid", "duplicate", "bad"):
        results[name]["ratio_to_baseline"] = round(results[name]["rps"] / base, 3) if base else None
    for name in ("valid", "duplicate"):
        results[name]["ratio_to_one_query"] = round(results[name]["rps"] / db, 3) if db else None
    return {"scenarios": results, "paced_valid": paced_runs, "outcomes_in_db": counts, "users": users}


# -- (d) a new delivery on a subscription with 50 events ---------------------------------------


def history_requests(host: str, users: list[str], events: int, t0: datetime) -> dict[str, list[bytes]]:
    """Per scenario, signed requests built from the providers' documented shapes
    (functions.webhooks.samples): `*_setup` gives every user's subscription `events` events,
    `*_next` one more each (the measured deliveries), `*_fresh` a first delivery on a fresh
    subscription for other users (the baseline)."""
    from functions.webhooks.samples import paystack_event, paystack_signature, revenuecat_event

    def ps(body: dict[str, Any]) -> bytes:
        raw = json.dumps(body).encode()
        headers = {"content-type": "application/json", "x-paystack-signature": paystack_signature(raw, PAYSTACK_SECRET)}
        return build_request("POST", f"{BASE}/paystack", host, headers, raw)

    def rc(body: dict[str, Any]) -> bytes:
        headers = {"content-type": "application/json", "authorization": RC_AUTH}
        return build_request("POST", f"{BASE}/revenuecat", host, headers, json.dumps(body).encode())

    out: dict[str, list[bytes]] = {k: [] for k in ("paystack_setup", "paystack_next", "paystack_fresh",
                                                   "revenuecat_setup", "revenuecat_next", "revenuecat_fresh")}
    half = len(users) // 2
    for n, user in enumerate(users):
        fresh = n >= half
        code, sub = f"CUS_h{user[:12]}", f"SUB_h{user[:12]}"
        common = {"customer_code": code, "email": f"{user}@bench.example", "plan_code": PAYSTACK_PLAN,
                  "amount": AMOUNT, "subscription_code": sub}
        month = timedelta(days=30)
        if fresh:
            out["paystack_fresh"].append(ps(paystack_event("charge.success", user_id=user, at=t0, **common)))
            out["revenuecat_fresh"].append(rc(revenuecat_event(
                "INITIAL_PURCHASE", app_user_id=user, at=t0, original_transaction_id=f"h{user}", expires=t0 + month)))
            continue
        start = t0 - month * events
        setup = [paystack_event("charge.success", user_id=user, at=start, **common),
                 paystack_event("subscription.create", at=start + timedelta(seconds=4), **common)]
        setup += [paystack_event("invoice.update", at=start + month * i, next_payment=start + month * (i + 1), **common)
                  for i in range(1, events - 1)]
        out["paystack_setup"] += [ps(b) for b in setup]
        out["paystack_next"].append(ps(paystack_event("invoice.update", at=t0, next_payment=t0 + month, **common)))
        kinds = ["INITIAL_PURCHASE"] + ["RENEWAL"] * (events - 1)
        out["revenuecat_setup"] += [rc(revenuecat_event(k, app_user_id=user, at=start + month * i,
                                                        original_transaction_id=f"h{user}",
                                                        expires=start + month * (i + 1)))
                                    for i, k in enumerate(kinds)]
        out["revenuecat_next"].append(rc(revenuecat_event("RENEWAL", app_user_id=user, at=t0,
                                                          original_transaction_id=f"h{user}", expires=t0 + month)))
    return out


def history_run(admin_dsn: str, redis_url: str, *, users: int, events: int, rate: float,
                connections: int) -> dict[str, Any]:
    with harness.scratch_database(admin_dsn, f"{DB_NAME}_h_{secrets.token_hex(4)}") as dsn:
        ids = prepare(dsn, users)
        env = {"DATABASE_URL": dsn, "REDIS_URL": redis_url, "KEY_PREFIX": "bench:" + secrets.token_hex(4),
               "PAYSTACK_SECRET_KEY": PAYSTACK_SECRET, "REVENUECAT_WEBHOOK_AUTH": RC_AUTH, "REDIS_TIMEOUT_MS": "1000",
               "WEBHOOK_DEADLINE_S": "5"}
        started_at = datetime.now(UTC)
        with harness.server("bench.webhooks:timed_app", env, ready_path=f"{BASE}/health") as port:
            host = f"127.0.0.1:{port}"
            reqs = history_requests(host, ids, events, datetime.now(UTC).replace(microsecond=0) - timedelta(days=1))
            t = time.perf_counter()
            for provider in ("paystack", "revenuecat"):  # each subscription's events in order, many at once
                setup = reqs[f"{provider}_setup"]
                per_user = len(setup) // len(reqs[f"{provider}_next"])
                chains = [setup[i * per_user:(i + 1) * per_user] for i in range(len(reqs[f"{provider}_next"]))]
                statuses = asyncio.run(_send_chains(port, chains, connections))
                assert statuses == Counter({200: len(setup)}), statuses
            setup_s = time.perf_counter() - t
            rows = {}
            for name in ("paystack_fresh", "paystack_next", "revenuecat_fresh", "revenuecat_next"):
                batch = reqs[name]
                httpx.get(f"http://{host}/bench-stats")
                lat = asyncio.run(open_loop("127.0.0.1", port, batch, rate=rate, duration=len(batch) / rate))
                server = sorted(httpx.get(f"http://{host}/bench-stats").json())
                rows[name] = {**lat.summary(), "server_p50_ms": pct(server, 50), "server_p95_ms": pct(server, 95),
                              "server_p99_ms": pct(server, 99), "server_n": len(server)}
        counts = outcomes(dsn, started_at)
        depth = _depth(dsn)
    for provider in ("paystack", "revenuecat"):
        base, hist = rows[f"{provider}_fresh"], rows[f"{provider}_next"]
        hist["ratio_p95_to_fresh"] = round(hist["server_p95_ms"] / base["server_p95_ms"], 2) if base["server_p95_ms"] else None
    return {"rows": rows, "events_per_subscription": events, "rate": rate, "setup_s": round(setup_s, 1),
            "outcomes_in_db": counts, "stream_depth": depth}


def _depth(dsn: str) -> dict[str, int]:
    """The largest number of deliveries recorded for one subscription, per provider."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("select provider, max(n) from (select provider, subscription_id, count(*) n from "
                            "public.webhook_deliveries where subscription_id is not null group by 1, 2) s group by 1"
                            ).fetchall()
    return {str(p): int(n) for p, n in rows}


async def _send_chains(port: int, chains: list[list[bytes]], connections: int) -> Counter[int]:
    """Each chain's requests one after the other (a subscription's events in order), up to
    `connections` chains at once."""
    from bench.loadgen import Connection

    statuses: Counter[int] = Counter()
    queue: asyncio.Queue[list[bytes]] = asyncio.Queue()
    for c in chains:
        queue.put_nowait(c)

    async def worker() -> None:
        conn = Connection("127.0.0.1", port)
        try:
            while not queue.empty():
                for raw in queue.get_nowait():
                    status, _ = await conn.send(raw)
                    statuses[status] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


def render_history(h: dict[str, Any]) -> str:
    lines = [f"(d) a new delivery on a subscription with {h['events_per_subscription']} events, at {h['rate']:.0f}/s "
             f"(open loop; setup {h['setup_s']} s; deepest subscription: {h['stream_depth']})"]
    labels = {"paystack_fresh": "paystack: fresh subscription (baseline)", "paystack_next": "paystack: 51st event",
              "revenuecat_fresh": "revenuecat: fresh subscription (baseline)", "revenuecat_next": "revenuecat: 51st event"}
    for name, r in h["rows"].items():
        ratio = r.get("ratio_p95_to_fresh")
        lines.append(f"  {labels[name]:<42} n={r['server_n']:<4} server p50 {r['server_p50_ms']:6.2f} / p95 "
                     f"{r['server_p95_ms']:6.2f} ms; client p95 {r['p95_ms']:6.2f} ms"
                     + (f"; p95 / baseline {ratio:.2f}; target p95 <= 20 ms: {'met' if r['server_p95_ms'] <= 20 else 'NOT met'}"
                        if ratio is not None else ""))
    lines.append(f"  outcomes stored: {json.dumps(h['outcomes_in_db'], sort_keys=True)}")
    return "\n".join(lines)


def pct(data: list[float], p: float) -> float:
    return round(data[int(p / 100 * (len(data) - 1))], 2) if data else float("nan")


def render(report: dict[str, Any]) -> str:
    lines = [f"webhooks benchmark: {report['machine']}", report["note"], ""]
    lines.append(f"{'scenario':<38}{'per s':>8}{'p50 ms':>9}{'p95 ms':>9}{'srv p95':>9}{'/base':>7}{'/1 query':>9}"
                 f"{'non-2xx':>9}")
    labels = {"baseline": "(0) baseline GET /health (no I/O)", "db": "(0') one DB round trip (same pool)",
              "valid": "(a) valid (new delivery)", "duplicate": "(b) duplicate (a retry)",
              "bad": "(c) badly signed (401)"}
    for name, s in report["http"]["scenarios"].items():
        ratio, ratio_db = s.get("ratio_to_baseline"), s.get("ratio_to_one_query")
        non2xx = s["non_2xx"] + s["errors"]
        rounds = "/".join(f"{r:.0f}" for r in s["rps_rounds"])
        srv = s.get("server_p95_ms")
        lines.append(f"{labels[name]:<38}{s['rps']:>8.0f}{s['p50_ms']:>9.2f}{s['p95_ms']:>9.2f}"
                     f"{(f'{srv:.2f}' if srv is not None else '-'):>9}{(f'{ratio:.2f}' if ratio else '-'):>7}"
                     f"{(f'{ratio_db:.2f}' if ratio_db else '-'):>9}{non2xx:>9}   rounds {rounds}")
    lines.append("")
    for p in report["http"]["paced_valid"]:
        lines.append(
            f"valid deliveries at {p['rate']:.0f}/s (open loop, {p['requests']} requests, {p['non_2xx'] + p['errors']} non-2xx): "
            f"client p50 {p['p50_ms']:.2f} / p95 {p['p95_ms']:.2f} ms; server p50 {p['server_p50_ms']:.2f} / "
            f"p95 {p['server_p95_ms']:.2f} / p99 {p['server_p99_ms']:.2f} ms "
            f"(target server p95 < 20 ms: {'met' if p['server_p95_ms'] < 20 else 'NOT met'})")
    lines.append(f"outcomes stored during the run: {json.dumps(report['http']['outcomes_in_db'], sort_keys=True)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3.0, help="seconds per scenario per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--rates", default="20,100", help="deliveries per second for the latency runs (comma-separated)")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--json", action="store_true")
    p.add_argument("--history-events", type=int, default=50, help="events already on each subscription in (d)")
    p.add_argument("--history-users", type=int, default=200, help="subscriptions in (d): half with history, half fresh")
    p.add_argument("--history-rate", type=float, default=50.0, help="deliveries per second in (d)")
    p.add_argument("--history-only", action="store_true", help="run only (d)")
    args = p.parse_args(argv)
    if args.history_only:
        with harness.services() as svc:
            h = history_run(svc.admin_dsn, svc.redis_url, users=args.history_users, events=args.history_events,
                            rate=args.history_rate, connections=args.connections)
        print(json.dumps(h, indent=2) if args.json else f"webhooks benchmark: {harness.machine()}\n" + render_history(h))
        return 0
    with harness.services() as svc:
        report = {
            "machine": harness.machine(),
            "note": (f"one uvicorn worker, JSON access log on; closed loop, {args.connections} keep-alive connections; "
                     f"{args.rounds} interleaved rounds of {args.duration:.0f} s per scenario after a warm-up, median round "
                     "shown; 'srv p95' is measured inside the server process around the function; load generator on the "
                     "same machine"),
            "http": run(svc.admin_dsn, svc.redis_url, args.duration, args.rounds, args.connections,
                        [float(r) for r in args.rates.split(",") if r.strip()], args.users),
            "history": history_run(svc.admin_dsn, svc.redis_url, users=args.history_users,
                                   events=args.history_events, rate=args.history_rate, connections=args.connections),
        }
    print(json.dumps(report, indent=2) if args.json else render(report) + "\n\n" + render_history(report["history"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
