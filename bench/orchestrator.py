"""Realtime orchestrator benchmark: events through ingest, the outbox and the drain to local
Realtime / FCM / APNs stand-ins, with real Postgres and Redis.

    python -m bench.orchestrator [--events 10000] [--users 1000] [--outage 30] [--json]
    python -m bench.orchestrator --quick          # 2,000 events, a 10 s outage

Three runs, each on an emptied ledger, the function served by uvicorn (2 workers, so
drainers in different processes compete for the same rows), 32 concurrent signed ingests
(each starts a background drain after its response) plus two scheduled-drain loops (`POST /drain`):

1. baseline: no batching (one Realtime message per request, one push per event);
2. the orchestrator as configured (Realtime batches, pushes coalesced within the window);
3. the same with FCM and APNs failing for `--outage` seconds from mid-ingest.

Prints events per second (ingest), deliveries per second, Realtime requests and messages per
request, pushes and coalesced pushes, end-to-end p95 per channel (event written -> delivery
recorded; normal-priority pushes wait for their batching window by design), the subject /
baseline ratio of provider requests, and for the outage run the exactly-once check: every
(event, topic) and (event, device) accepted by the providers exactly once, none lost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg

from bench import harness

APP = "functions.realtime_orchestrator.handler:app"
BASE = "/functions/v1/realtime-orchestrator"
SERVICE_KEY = "bench-service-key"
DRAIN_SECRET = "bench-drain-secret"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"bench-orchestrator-secret-0123456").decode()


def make_keys() -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    pem, pkcs8, spki = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.PublicFormat.SubjectPublicKeyInfo
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "fcm_private": rsa_key.private_bytes(pem, pkcs8, serialization.NoEncryption()).decode(),
        "fcm_public": rsa_key.public_key().public_bytes(pem, spki).decode(),
        "apns_private": ec_key.private_bytes(pem, pkcs8, serialization.NoEncryption()).decode(),
        "apns_public": ec_key.public_key().public_bytes(pem, spki).decode(),
    }


@contextmanager
def fake_providers(keys: dict[str, str]) -> Iterator[str]:
    """The tests' provider stand-in, in its own process (its threads do not compete with the
    load generator for this process's GIL)."""
    port = harness.free_port()
    config = json.dumps({"service_key": SERVICE_KEY, "fcm_public_key": keys["fcm_public"],
                         "apns_public_key": keys["apns_public"]})
    proc = subprocess.Popen([sys.executable, "-m", "tests.functions.realtime_orchestrator.fakes", "--port", str(port),
                             "--config", config], cwd=harness.ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("http"), "the provider fake did not start"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(url + "/_reset", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the provider fake did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def server_env(dsn: str, redis_url: str, fake: str, keys: dict[str, str], args: argparse.Namespace,
               overrides: dict[str, str]) -> dict[str, str]:
    account = {"type": "service_account", "project_id": "edgefn-bench", "private_key_id": "k1",
               "private_key": keys["fcm_private"], "client_email": "push@edgefn-bench.iam.gserviceaccount.com"}
    return {
        "DATABASE_URL": dsn, "REDIS_URL": redis_url, "KEY_PREFIX": "bench:" + secrets.token_hex(4),
        "REDIS_TIMEOUT_MS": "1000", "DB_POOL_MAX": "10", "EDGEFN_ACCESS_LOG": "0",
        "ORCHESTRATOR_WEBHOOK_SECRETS": WEBHOOK_SECRET, "ORCHESTRATOR_DRAIN_SECRET": DRAIN_SECRET,
        "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY, "REALTIME_URL": fake,
        "REALTIME_MESSAGES_PER_SECOND": str(args.mps), "REALTIME_BATCH_SIZE": "100",
        "FCM_SERVICE_ACCOUNT_JSON": json.dumps(account), "FCM_URL": fake, "FCM_TOKEN_URL": fake + "/token",
        "APNS_URL": fake, "APNS_HTTP2": "false", "APNS_KEY_ID": "KEYID12345", "APNS_TEAM_ID": "TEAMID1234",
        "APNS_TOPIC": "com.example.app", "APNS_PRIVATE_KEY": keys["apns_private"],
        "BATCH_WINDOW_SECONDS": str(args.window), "PUSH_DAILY_CAP": "100000", "DRAIN_BUDGET_SECONDS": "10",
        "MAX_ATTEMPTS": "12",
        **overrides,
    }


# -- data ----------------------------------------------------------------------------------------


def seed(dsn: str, users: int) -> dict[str, Any]:
    """Users with a profile, a tier (20 % paid), 1-2 devices each (FCM or APNs) and matches."""
    rng = random.Random(7)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(users)]
    devices = []
    for i, u in enumerate(ids):
        for d in range(1 + (i % 3 == 0)):
            platform = "apns" if (i + d) % 2 else "fcm"
            token = os.urandom(32).hex() if platform == "apns" else f"fcm-{uuid.uuid4().hex}"
            devices.append((u, platform, token))
    pairs = set()
    while len(pairs) < users // 2:
        a, b = rng.sample(ids, 2)
        pairs.add((min(a, b), max(a, b)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("truncate auth.users cascade")
        with conn.cursor() as cur:
            with cur.copy("copy auth.users (id, email) from stdin") as cp:
                for u in ids:
                    cp.write_row((u, f"{u}@bench.invalid"))
            with cur.copy("copy public.profiles (id) from stdin") as cp:
                for u in ids:
                    cp.write_row((u,))
            with cur.copy("copy public.user_tiers (user_id, tier) from stdin") as cp:
                for i, u in enumerate(ids):
                    cp.write_row((u, "paid" if i % 5 == 0 else "free"))
            with cur.copy("copy public.device_tokens (user_id, platform, token) from stdin") as cp:
                for row in devices:
                    cp.write_row(row)
            cur.execute("insert into public.matches (user_a, user_b) select a, b from unnest(%s::uuid[], %s::uuid[]) as x(a, b) "
                        "returning id::text, user_a::text, user_b::text", ([p[0] for p in pairs], [p[1] for p in pairs]))
            matches = cur.fetchall()
    return {"users": ids, "matches": matches, "devices": len(devices)}


def make_events(world: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """50 % likes (normal: coalesced), 30 % messages (urgent), 20 % matches (urgent, two users)."""
    rng = random.Random(11)
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.5:
            out.append({"type": "like.received", "data": {"i": i}, "recipients": [rng.choice(world["users"])]})
        elif r < 0.8:
            out.append({"type": "message.received", "data": {"i": i, "preview": "hi"}, "recipients": [rng.choice(world["users"])]})
        else:
            mid, a, b = rng.choice(world["matches"])
            out.append({"type": "match.created", "data": {"i": i, "match_id": mid}, "recipients": [a, b]})
    return out


def empty_ledger(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("truncate public.outbox, public.user_events, public.event_deliveries, "
                     "public.event_delivery_attempts, public.push_daily_counts")
        conn.execute("update public.device_tokens set active = true")


# -- one run ---------------------------------------------------------------------------------------


async def drive(port: int, fake: str, dsn: str, events: list[dict[str, Any]], concurrency: int,
                outage: float, timeout: float) -> dict[str, Any]:
    from functions.realtime_orchestrator.signatures import sign

    base = f"http://127.0.0.1:{port}{BASE}"
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    stop = asyncio.Event()
    outage_window: list[float] = []
    async with httpx.AsyncClient(timeout=60, limits=limits) as client, httpx.AsyncClient(timeout=10) as control:

        async def drainer() -> None:
            while not stop.is_set():
                try:
                    await client.post(base + "/drain", headers={"authorization": f"Bearer {DRAIN_SECRET}"})
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)

        async def push_outage() -> None:
            outage_window.append(time.time())
            await control.post(fake + "/_mode", json={"fcm": "fail", "apns": "fail"})
            await asyncio.sleep(outage)
            await control.post(fake + "/_mode", json={"fcm": "ok", "apns": "ok"})
            outage_window.append(time.time())

        queue = list(enumerate(events))
        statuses: Counter[Any] = Counter()
        outage_task: asyncio.Task[None] | None = None

        async def ingester() -> None:
            nonlocal outage_task
            while queue:
                i, ev = queue.pop(0)
                if outage and outage_task is None and i >= len(events) // 2:
                    outage_task = asyncio.create_task(push_outage())
                raw = json.dumps(ev).encode()
                msg_id = f"msg_{i}_{uuid.uuid4().hex[:8]}"
                for attempt in range(5):  # a sender retries with the same webhook-id: idempotent
                    headers = {**sign(WEBHOOK_SECRET, msg_id, raw), "content-type": "application/json"}
                    try:
                        resp = await client.post(base + "/events", content=raw, headers=headers)
                    except httpx.HTTPError as exc:
                        statuses[type(exc).__name__] += 1
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    statuses[resp.status_code] += 1
                    if resp.status_code < 500:
                        break
                    await asyncio.sleep(0.2 * (attempt + 1))

        drainers = [asyncio.create_task(drainer()) for _ in range(2)]
        started = time.time()
        await asyncio.gather(*(ingester() for _ in range(concurrency)))
        ingest_s = time.time() - started
        if outage_task is not None:
            await outage_task
        # everything routed and delivered (or finally failed)
        deadline = time.time() + timeout
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.time() < deadline:
                left = conn.execute(
                    "select (select count(*) from public.outbox where processed_at is null) + "
                    "(select count(*) from public.event_deliveries where status in ('pending', 'leased'))").fetchone()
                if left and left[0] == 0:
                    break
                await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*drainers)
        records = (await control.get(fake + "/_records", timeout=120)).json()
    return {"ingest_s": ingest_s, "statuses": dict(statuses), "records": records, "outage_window": outage_window}


def measure(dsn: str, run: dict[str, Any], n_events: int) -> dict[str, Any]:
    records = run["records"]
    rt = [r for r in records if r["provider"] == "realtime" and r["status"] == 202]
    pushes = [r for r in records if r["provider"] in ("fcm", "apns") and r["status"] == 200]
    failed_push_calls = [r for r in records if r["provider"] in ("fcm", "apns") and r["status"] >= 500]
    with psycopg.connect(dsn, autocommit=True) as conn:
        by_status = dict(conn.execute(
            "select channel || ':' || status, count(*) from public.event_deliveries group by 1").fetchall())
        p95 = {f"{ch}/{pr}": round(float(v) * 1000) for ch, pr, v in conn.execute(
            "select channel, priority, percentile_cont(0.95) within group "
            "(order by extract(epoch from sent_at - event_created_at)) from public.event_deliveries "
            "where status = 'sent' group by 1, 2 order by 1, 2").fetchall()}
        span = conn.execute("select extract(epoch from max(sent_at) - min(event_created_at)), count(*) "
                            "from public.event_deliveries where status = 'sent'").fetchone()
        # exactly once: what the providers accepted, against what the ledger says was sent
        want_rt = Counter((t, str(e)) for t, e in conn.execute(
            "select target, event_id from public.event_deliveries where channel = 'realtime' and status = 'sent'"))
        want_push = Counter((tok, str(e)) for tok, e in conn.execute(
            "select t.token, d.event_id from public.event_deliveries d join public.device_tokens t on t.id = d.target::uuid "
            "where d.channel = 'push' and d.status = 'sent'"))
        outcomes = {f"{o}: {e or ''}": int(n) for o, e, n in conn.execute(
            "select outcome, left(regexp_replace(error, '[0-9a-f-]{36}', '<id>', 'g'), 60), count(*) "
            "from public.event_delivery_attempts where outcome <> 'sent' group by 1, 2 order by 3 desc limit 8")}
        unfinished = conn.execute("select count(*) from public.event_deliveries where status not in ('sent')").fetchone()[0]
        outbox_left = conn.execute("select count(*) from public.outbox where processed_at is null").fetchone()[0]
    got_rt = Counter((m["topic"], m["payload"]["event_id"]) for r in rt for m in r["body"]["messages"])
    got_push: Counter[tuple[str, str]] = Counter()
    for r in pushes:
        body = r["body"]
        ids = body["message"]["data"]["event_ids"].split(",") if "message" in body else body["event_ids"]
        for e in ids:
            got_push[(r["token"], e)] += 1
    sent = int(span[1])
    return {
        "events": n_events,
        "ingest_events_per_s": round(n_events / run["ingest_s"], 1),
        "ingest_statuses": run["statuses"],
        "deliveries_sent": sent,
        "deliveries_per_s": round(sent / float(span[0]), 1) if span[0] else None,
        "realtime_requests": len(rt),
        "realtime_messages_per_request": round(sum(len(r["body"]["messages"]) for r in rt) / max(len(rt), 1), 1),
        "push_requests": len(pushes),
        "coalesced_pushes": sum(1 for r in pushes if _count(r) > 1),
        "events_per_coalesced_push": round(sum(_count(r) for r in pushes if _count(r) > 1)
                                           / max(sum(1 for r in pushes if _count(r) > 1), 1), 2),
        "provider_requests": len(rt) + len(pushes),
        "failed_push_calls": len(failed_push_calls),
        "e2e_p95_ms": p95,
        "failed_attempts": outcomes,
        "ledger": by_status,
        "exactly_once": {
            "realtime_duplicates": sum(c - 1 for c in got_rt.values() if c > 1),
            "push_duplicates": sum(c - 1 for c in got_push.values() if c > 1),
            "realtime_matches_ledger": set(got_rt) == set(want_rt),
            "push_matches_ledger": set(got_push) == set(want_push),
            "not_sent_in_ledger": int(unfinished),
            "outbox_unrouted": int(outbox_left),
        },
    }


def _count(r: dict[str, Any]) -> int:
    body = r["body"]
    return int(body["message"]["data"]["count"]) if "message" in body else int(body["count"])


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    keys = make_keys()
    out: dict[str, Any] = {"machine": harness.machine(), "settings": {
        "events": args.events, "users": args.users, "concurrency": args.concurrency, "workers": args.workers,
        "batch_window_s": args.window, "realtime_messages_per_s": args.mps, "outage_s": args.outage}}
    with harness.services() as svc, fake_providers(keys) as fake:
        with harness.scratch_database(svc.admin_dsn, f"edgefn_bench_orchestrator_{secrets.token_hex(3)}") as dsn:
            world = seed(dsn, args.users)
            out["settings"]["devices"] = world["devices"]
            events = make_events(world, args.events)
            runs = [("baseline (no batching)", {"REALTIME_BATCH_SIZE": "1", "PUSH_COALESCING": "false"}, 0.0),
                    ("orchestrator", {}, 0.0)]
            if args.outage > 0:
                runs.append((f"orchestrator, push down {args.outage:g} s", {}, args.outage))
            if args.only:
                runs = [r for r in runs if args.only in r[0]]
            results = {}
            for name, overrides, outage in runs:
                empty_ledger(dsn)
                httpx.post(fake + "/_reset")
                env = server_env(dsn, svc.redis_url, fake, keys, args, overrides)
                print(f"-- {name} ...", file=sys.stderr, flush=True)
                with harness.server(APP, env, workers=args.workers, ready_path=BASE + "/health") as port:
                    run = asyncio.run(drive(port, fake, dsn, events, args.concurrency, outage, args.timeout))
                results[name] = measure(dsn, run, len(events))
                if run["outage_window"]:
                    results[name]["outage_window_s"] = round(run["outage_window"][1] - run["outage_window"][0], 1)
            out["runs"] = results
            if args.only:
                out["ratios"] = {}
                return out
            base, subj = results["baseline (no batching)"], results["orchestrator"]
            out["ratios"] = {
                "provider_requests_subject_over_baseline": round(subj["provider_requests"] / max(base["provider_requests"], 1), 3),
                "deliveries_per_s_subject_over_baseline": round((subj["deliveries_per_s"] or 0) / (base["deliveries_per_s"] or 1), 3),
            }
    return out


def render(out: dict[str, Any]) -> str:
    lines = [f"machine: {out['machine']}", "settings: " + ", ".join(f"{k}={v}" for k, v in out["settings"].items()), ""]
    names = list(out["runs"])
    rows = [
        ("events/s (ingest)", "ingest_events_per_s"), ("deliveries sent", "deliveries_sent"),
        ("deliveries/s", "deliveries_per_s"), ("Realtime requests", "realtime_requests"),
        ("messages per Realtime request", "realtime_messages_per_request"), ("push requests", "push_requests"),
        ("coalesced pushes", "coalesced_pushes"), ("events per coalesced push", "events_per_coalesced_push"),
        ("provider requests", "provider_requests"), ("failed push calls", "failed_push_calls"),
    ]
    width = max(len(n) for n in names) + 2
    lines.append(f"{'':<32}" + "".join(f"{n:>{width}}" for n in names))
    for label, key in rows:
        lines.append(f"{label:<32}" + "".join(f"{out['runs'][n][key]!s:>{width}}" for n in names))
    keys = sorted({k for n in names for k in out["runs"][n]["e2e_p95_ms"]})
    for k in keys:
        lines.append(f"{'e2e p95 ms ' + k:<32}" + "".join(f"{out['runs'][n]['e2e_p95_ms'].get(k, '-')!s:>{width}}" for n in names))
    lines.append("")
    for n in names:
        eo = out["runs"][n]["exactly_once"]
        ok = (eo["realtime_duplicates"] == 0 and eo["push_duplicates"] == 0 and eo["realtime_matches_ledger"]
              and eo["push_matches_ledger"] and eo["not_sent_in_ledger"] == 0 and eo["outbox_unrouted"] == 0)
        lines.append(f"{n}: exactly once {'OK' if ok else 'FAILED'} {eo}")
        if out["runs"][n]["failed_attempts"]:
            lines.append(f"  attempts that failed: {out['runs'][n]['failed_attempts']}")
    lines.append("")
    lines += [f"{k}: {v}" for k, v in out["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--window", type=int, default=5, help="push batching window, seconds (production default 60)")
    ap.add_argument("--mps", type=int, default=2500, help="Realtime messages per second (the plan's limit)")
    ap.add_argument("--outage", type=float, default=30.0, help="seconds FCM and APNs fail mid-run (0: skip that run)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the last delivery")
    ap.add_argument("--quick", action="store_true", help="2,000 events, 500 users, a 10 s outage")
    ap.add_argument("--only", help="run only the runs whose name contains this (no ratios)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.users, args.outage = min(args.events, 2_000), min(args.users, 500), min(args.outage, 10.0)
    from functions.realtime_orchestrator.providers import fail_fast_on_missing_sniffio

    fail_fast_on_missing_sniffio()  # the load generator uses httpx too
    out = run_all(args)
    print(json.dumps(out, indent=2, default=str) if args.json else render(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
