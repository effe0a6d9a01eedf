"""Realtime orchestrator benchmark: events through ingest, the outbox and the drain to local
Realtime / FCM / APNs stand-ins, with real Postgres and Redis.

    python -m bench.orchestrator [--events 10000] [--users 1000] [--outage 30] [--json]
    python -m bench.orchestrator --quick          # 2,000 events, a 10 s outage
    python -m bench.orchestrator --free-plan      # Realtime on the Free plan, half used by others

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

`--free-plan` instead: the Realtime stand-in enforces the Free plan as Realtime's server does
(100 messages/s as a 60 s average, the batch counted on top, 429 without Retry-After) while
other clients of the project use 50/s. The events arrive open loop, their Realtime messages at
`--arrival` times the remaining 50/s, through the same fleet. Prints delivered messages per
second over the run and its ratio to the remaining rate (goal >= 0.90), the 429 count and
share of requests (goal < 1 %), the maximum backlog age (sampled every second: the oldest
acknowledged event not yet routed, or due Realtime message not yet delivered) and the
exactly-once check.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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
def fake_providers(keys: dict[str, str], fcm_project: str = "edgefn-bench") -> Iterator[str]:
    """The tests' provider stand-in, in its own process (it does not compete with the load
    generator for this process's GIL); APNs on the same port, over HTTP/2."""
    port = harness.free_port()
    config = json.dumps({"service_key": SERVICE_KEY, "fcm_public_key": keys["fcm_public"],
                         "apns_public_key": keys["apns_public"], "fcm_project": fcm_project})
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
        "APNS_URL": fake, "APNS_KEY_ID": "KEYID12345", "APNS_TEAM_ID": "TEAMID1234",
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


async def post_event(client: httpx.AsyncClient, base: str, i: int, event: dict[str, Any], statuses: Counter[Any]) -> None:
    """One signed event into ingest, retried on 5xx and transport errors as a sender does:
    with the same webhook-id (idempotent)."""
    from functions.realtime_orchestrator.signatures import sign

    raw = json.dumps(event).encode()
    msg_id = f"msg_{i}_{uuid.uuid4().hex[:8]}"
    for attempt in range(5):
        headers = {**sign(WEBHOOK_SECRET, msg_id, raw), "content-type": "application/json"}
        try:
            resp = await client.post(base + "/events", content=raw, headers=headers)
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        statuses[resp.status_code] += 1
        if resp.status_code < 500:
            return
        await asyncio.sleep(0.2 * (attempt + 1))


async def drive(port: int, fake: str, dsn: str, events: list[dict[str, Any]], concurrency: int,
                outage: float, timeout: float) -> dict[str, Any]:
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
                await post_event(client, base, i, ev, statuses)

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


# -- the Free plan, half used by others ----------------------------------------------------------

FREE_PLAN = 100  # messages per second (guides/realtime/limits)


def messages_of(event: dict[str, Any]) -> int:
    """Realtime messages an event makes: one per recipient (a match: two)."""
    return len(event["recipients"])


async def drive_open_loop(port: int, fake: str, dsn: str, redis_url: str, key_prefix: str,
                          events: list[dict[str, Any]], rate: float, timeout: float) -> dict[str, Any]:
    """Events written into the outbox at `rate` per second, open loop, the way our functions
    write them (`enqueue_event`, a transaction every 0.2 s), two scheduled-drain loops, and
    every second the backlog age and the Realtime pace (its rate in Redis), until every
    Realtime message is delivered."""
    import redis.asyncio as aioredis
    from psycopg.types.json import Jsonb

    base = f"http://127.0.0.1:{port}{BASE}"
    stop = asyncio.Event()
    samples: list[dict[str, float]] = []
    async with httpx.AsyncClient(timeout=60) as client:

        async def drainer() -> None:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    await client.post(base + "/drain", headers={"authorization": f"Bearer {DRAIN_SECRET}"})
                await asyncio.sleep(0.5)

        async def sampler() -> None:
            r = aioredis.from_url(redis_url)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    cur = await conn.execute(
                        "select greatest((select extract(epoch from now() - min(created_at)) from public.outbox "
                        "                 where processed_at is null),"
                        "                (select extract(epoch from now() - min(due_at)) from public.event_deliveries "
                        "                 where channel = 'realtime' and status in ('pending', 'leased') and due_at <= now()))")
                    row = await cur.fetchone()
                    pace = await r.hget(f"{key_prefix}:pace:realtime", "rate")
                    samples.append({"at": time.time(), "backlog_s": float(row[0] or 0.0) if row else 0.0,
                                    "pace": float(pace) if pace else float("nan")})
                    await asyncio.sleep(1.0)
            await r.aclose()

        tasks = [asyncio.create_task(drainer()) for _ in range(2)] + [asyncio.create_task(sampler())]
        started = time.time()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            written = 0
            while written < len(events):
                due = min(len(events), int((time.time() - started) * rate) + 1)
                async with conn.transaction():
                    async with conn.pipeline():
                        for ev in events[written:due]:
                            await conn.execute("select public.enqueue_event(%s, %s, %s::uuid[])",
                                               (ev["type"], Jsonb(ev["data"]), ev["recipients"]))
                written = due
                await asyncio.sleep(0.2)
            ingest_s = time.time() - started
            deadline = time.time() + timeout
            while time.time() < deadline:
                cur = await conn.execute(
                    "select (select count(*) from public.outbox where processed_at is null) + "
                    "(select count(*) from public.event_deliveries where channel = 'realtime' "
                    " and status in ('pending', 'leased'))")
                row = await cur.fetchone()
                if row and row[0] == 0:
                    break
                await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        records = (await client.get(fake + "/_records", timeout=120)).json()
        stats = (await client.get(fake + "/_stats", timeout=30)).json()
    return {"started": started, "ingest_s": ingest_s, "statuses": {}, "records": records, "stats": stats,
            "samples": samples}


def timeline(records: list[dict[str, Any]], samples: list[dict[str, float]], started: float, step: float = 30.0) -> list[str]:
    """Per `step` seconds: messages delivered per second, 429s, the pace and the backlog age."""
    rows = []
    end = max((r["at"] for r in records), default=started)
    t = started
    while t < end:
        rt = [r for r in records if r["provider"] == "realtime" and t <= r["at"] < t + step]
        sent = sum(len(r["body"]["messages"]) for r in rt if r["status"] == 202)
        window = [x for x in samples if t <= x["at"] < t + step]
        paces = [x["pace"] for x in window if x["pace"] == x["pace"]]
        rows.append(f"  {t - started:5.0f}-{t - started + step:4.0f} s  {sent / step:5.1f}/s  429: "
                    f"{sum(r['status'] == 429 for r in rt):2d}  pace {min(paces, default=0):5.1f}-{max(paces, default=0):5.1f}"
                    f"  backlog {max((x['backlog_s'] for x in window), default=0):5.1f} s")
        t += step
    return rows


def run_free_plan(args: argparse.Namespace) -> dict[str, Any]:
    keys = make_keys()
    other = FREE_PLAN * args.other_share
    remaining = FREE_PLAN - other
    with harness.services() as svc, fake_providers(keys) as fake:
        with harness.scratch_database(svc.admin_dsn, f"edgefn_bench_free_plan_{secrets.token_hex(3)}") as dsn:
            world = seed(dsn, args.users)
            events = make_events(world, args.events)
            per_event = sum(messages_of(e) for e in events) / len(events)
            rate = remaining * args.arrival / per_event
            httpx.post(fake + "/_realtime", json={"max_events_per_second": FREE_PLAN, "other_rate": other}).raise_for_status()
            env = server_env(dsn, svc.redis_url, fake, keys, args, {"REALTIME_MESSAGES_PER_SECOND": str(FREE_PLAN)})
            print(f"-- free plan: {len(events)} events at {rate:.1f}/s ...", file=sys.stderr, flush=True)
            with harness.server(APP, env, workers=args.workers, ready_path=BASE + "/health") as port:
                run = asyncio.run(drive_open_loop(port, fake, dsn, svc.redis_url, env["KEY_PREFIX"], events, rate,
                                                  args.timeout))
            checked = measure(dsn, run, len(events))
            with psycopg.connect(dsn, autocommit=True) as conn:
                p95 = conn.execute("select percentile_cont(0.95) within group (order by extract(epoch from sent_at - due_at)) "
                                   "from public.event_deliveries where channel = 'realtime' and status = 'sent'").fetchone()
    rt = [r for r in run["records"] if r["provider"] == "realtime"]
    ok = [r for r in rt if r["status"] == 202]
    delivered = sum(len(r["body"]["messages"]) for r in ok)
    span = max(r["at"] for r in ok) - run["started"] if ok else float("nan")
    answers = Counter(r["status"] for r in rt)
    per_s = delivered / span
    stats = run["stats"]["realtime"]
    return {
        "machine": harness.machine(),
        "settings": {"events": len(events), "users": args.users, "plan_messages_per_s": FREE_PLAN,
                     "others_messages_per_s": other, "remaining_messages_per_s": remaining,
                     "arrival_messages_per_s": round(rate * per_event, 1), "events_per_s": round(rate, 1),
                     "workers": args.workers},
        "realtime_messages_delivered": delivered,
        "seconds": round(span, 1),
        "delivered_per_s": round(per_s, 1),
        "ratio_to_remaining_rate": round(per_s / remaining, 3),
        "requests": sum(answers.values()),
        "answers": {str(k): v for k, v in sorted(answers.items())},
        "throttled_429": answers.get(429, 0),
        "throttled_share": round(answers.get(429, 0) / max(sum(answers.values()), 1), 4),
        "messages_per_request": round(delivered / max(len(ok), 1), 2),
        "max_backlog_age_s": round(max((x["backlog_s"] for x in run["samples"]), default=0.0), 1),
        "e2e_p95_realtime_s": round(float(p95[0]), 2) if p95 and p95[0] is not None else None,
        "others_measured_messages_per_s": round(stats["other_messages"] / stats["other_seconds"], 1),
        "exactly_once": checked["exactly_once"],
        "failed_attempts": checked["failed_attempts"],
        "timeline": timeline(run["records"], run["samples"], run["started"]),
        "goal_met": per_s >= 0.9 * remaining and answers.get(429, 0) < 0.01 * max(sum(answers.values()), 1),
    }


def render_free_plan(out: dict[str, Any]) -> str:
    s = out["settings"]
    eo = out["exactly_once"]
    once = eo["realtime_duplicates"] == 0 and eo["realtime_matches_ledger"] and eo["outbox_unrouted"] == 0
    return "\n".join([
        f"machine: {out['machine']}",
        "settings: " + ", ".join(f"{k}={v}" for k, v in s.items()),
        "",
        f"Realtime messages delivered   {out['realtime_messages_delivered']} in {out['seconds']} s",
        f"delivered/s                   {out['delivered_per_s']}  "
        f"(remaining rate {s['remaining_messages_per_s']}: ratio {out['ratio_to_remaining_rate']}, goal >= 0.90)",
        f"429 answers                   {out['throttled_429']} of {out['requests']} requests "
        f"({out['throttled_share'] * 100:.2f} %, goal < 1 %)",
        f"messages per request          {out['messages_per_request']}",
        f"max backlog age               {out['max_backlog_age_s']} s (e2e p95 {out['e2e_p95_realtime_s']} s)",
        f"others' traffic, measured     {out['others_measured_messages_per_s']} messages/s",
        f"exactly once (Realtime)       {'OK' if once else 'FAILED'} {eo}",
        f"goal                          {'met' if out['goal_met'] else 'NOT met'}",
        "",
        "timeline (delivered, 429s, the shared pace's rate, the backlog age):",
        *out["timeline"],
    ])


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
    ap.add_argument("--free-plan", action="store_true", help="Realtime on the Free plan with others using part of it")
    ap.add_argument("--other-share", type=float, default=0.5, help="--free-plan: the plan's share other clients use")
    ap.add_argument("--arrival", type=float, default=1.0,
                    help="--free-plan: Realtime messages arrive at this times the remaining rate")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.users, args.outage = min(args.events, 2_000), min(args.users, 500), min(args.outage, 10.0)
    from functions.realtime_orchestrator.providers import fail_fast_on_missing_sniffio

    fail_fast_on_missing_sniffio()  # the load generator uses httpx too
    if args.free_plan:
        out = run_free_plan(args)
        print(json.dumps(out, indent=2, default=str) if args.json else render_free_plan(out))
        return 0
    out = run_all(args)
    print(json.dumps(out, indent=2, default=str) if args.json else render(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
