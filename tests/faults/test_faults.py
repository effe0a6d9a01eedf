"""Faults injected while the fleet is under load, each with its expected outcome asserted.

    .venv/bin/pytest -m faults tests/faults          # EDGEFN_FAULT_SECONDS=5 for a quick run

1. Redis down: each route follows its fail-open / fail-closed policy; limits come back.
2. Postgres down: cached reads served stale, writes 503, webhooks non-2xx; the pools
   reconnect by themselves and every acknowledged delivery is stored.
3. Push providers and Realtime failing: the outbox holds the events and delivers each
   exactly once after recovery.
4. A worker SIGKILLed mid-request: swipes, matches, media rows and webhook effects are
   all-or-nothing.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.faults.conftest import (
    DEADLINE_S,
    FAULT_SECONDS,
    PAID_LIMIT,
    RATE,
    RECOVERY_S,
    Call,
    FaultRecord,
    Load,
    Mix,
    Requests,
    Sample,
    Stack,
    World,
    by_route,
    outage,
    recovery_seconds,
    rows,
    status_counts,
    unexpected,
    worker_pids,
)

pytestmark = pytest.mark.faults

OK = {200, 201, 202}
#: load before a fault, and after it (recovery is measured in the latter)
BEFORE_S = 3.0
AFTER_S = RECOVERY_S + 3.0
#: a webhook delivery is answered within its deadline (WEBHOOK_DEADLINE_S, 0.9 s by default)
#: plus this much for a loaded two-core machine running the client, the fleet and every service
WEBHOOK_DEADLINE_S = 0.9 + 1.1
#: the background load: requests per second of each route, relative
WEIGHTS = {"dashboard": 12, "recommendations": 8, "inbox": 6, "batch-swipe": 10, "presign": 6, "webhook": 6,
           "events": 6}  # fmt: skip


def webhook_users_needed(seconds: float, rate: float = RATE) -> int:
    """Users for `seconds` of background load (each webhook delivery takes a new one)."""
    return math.ceil(rate * WEIGHTS["webhook"] / sum(WEIGHTS.values()) * seconds * 1.3) + 20


def answered_in_time(samples: list[Sample]) -> None:
    """No request went unanswered, none took past the deadline, no 5xx other than 503."""
    lost = [s for s in samples if s.status is None]
    assert not lost, f"{len(lost)} requests got no answer: {status_counts(lost)} on {Counter(s.route for s in lost)}"
    errors = [s for s in samples if s.status is not None and s.status >= 500 and s.status != 503]
    assert not errors, f"server errors: {[(s.route, s.status, s.body[:200]) for s in errors[:5]]}"
    slow = max(samples, key=lambda s: s.ms)
    assert slow.ms < DEADLINE_S * 1000, f"{slow.route} took {slow.ms:.0f} ms (deadline {DEADLINE_S} s)"


def each_route_seen(samples: list[Sample], routes: set[str], when: str) -> None:
    seen = set(by_route(samples))
    assert routes <= seen, f"no {sorted(routes - seen)} requests {when}: the window proves nothing for them"


def background_mix(requests: Requests, world: World, hook_users: list[str], *, readers: list[str] | None = None,
                   on_webhook: Callable[[Call], Call] | None = None, seed: int = 1) -> Mix:
    """Every route's traffic (WEIGHTS): cached reads, the inbox, swipes, presigns, webhooks
    (one new user each; `on_webhook` sees each) and events."""
    rng = random.Random(seed)
    users = world.users
    readers = readers or users
    hooks = iter(hook_users)

    def swipes() -> Call:
        me = rng.choice(users)
        return requests.swipes(me, [(t, rng.choice(("like", "pass"))) for t in rng.sample(users, 3)])

    makers: dict[str, Callable[[], Call]] = {
        "dashboard": lambda: requests.dashboard(rng.choice(readers)),
        "recommendations": lambda: requests.deck(rng.choice(readers)),
        "inbox": lambda: requests.inbox(rng.choice(users)),
        "batch-swipe": swipes,
        "presign": lambda: requests.presign(rng.choice(users)),
        "webhook": lambda: (on_webhook or (lambda c: c))(requests.webhook(next(hooks))),
        "events": lambda: requests.event([rng.choice(users)]),
    }
    return Mix({route: (WEIGHTS[route], make) for route, make in makers.items()}, seed=seed)


# -- 1. Redis --------------------------------------------------------------------------------------


async def test_redis_down_each_route_follows_its_policy_and_limits_resume(
    stack: Stack, world: World, requests: Requests, fault_report: FaultRecord
) -> None:
    """Redis stopped for EDGEFN_FAULT_SECONDS, then started again (empty) on the same port.

    Expected while it is down: the fail-open routes (dashboard, recommendations, inbox)
    answer 200 from the database, uncached; the fail-closed routes (batch-swipe, presign:
    quotas cannot be checked) answer 503; webhooks answer 200 (the tier write is queued in
    the database) and events 202. Throughout: no 5xx but 503, every request answered within
    DEADLINE_S. After: every route answers 2xx again within RECOVERY_S, and the limiter
    enforces limits again (a paid user is admitted PAID_LIMIT times, then gets 429)."""
    fault_report.fault = "redis down"
    hook_users = await world.new_users(webhook_users_needed(BEFORE_S + FAULT_SECONDS + AFTER_S))
    async with Load(stack.base_url, background_mix(requests, world, hook_users)) as load:
        fault_report.loads.append(load)
        await asyncio.sleep(BEFORE_S)
        async with outage(stack, stack.redis) as o:
            pass
        await asyncio.sleep(AFTER_S)
    samples = load.samples

    answered_in_time(samples)
    bad = unexpected([s for s in samples if o.before(s)], dict.fromkeys(by_route(samples), OK))
    assert not bad, f"failures before the fault: {bad}"
    during = [s for s in samples if o.during(s)]
    each_route_seen(during, set(by_route(samples)), "while Redis was down")
    bad = unexpected(during, {
        "dashboard": {200}, "recommendations": {200}, "inbox": {200},
        "batch-swipe": {503}, "presign": {503}, "webhook": {200}, "events": {202},
    })  # fmt: skip
    assert not bad, f"routes that did not follow their Redis failure policy: {bad}"
    recovered = recovery_seconds(samples, o.up, lambda s: s.status in OK)
    fault_report.notes["recovery_s"] = round(recovered, 2)
    assert recovered < RECOVERY_S, f"routes still failing {recovered:.1f} s after Redis was back"

    # rate limiting is back: a paid user (limit PAID_LIMIT a minute) is admitted exactly that often
    probe = (await world.new_users(1))[0]
    prober = Load(stack.base_url)
    answers = [await prober.send(requests.dashboard(probe, "paid")) for _ in range(PAID_LIMIT + 5)]
    admitted = [s for s in answers if s.status == 200 and "rate_limit" in s.json()["metadata"]]
    limited = [s for s in answers if s.status == 429]
    fault_report.notes["limiter_probe"] = status_counts(answers)
    assert len(admitted) == PAID_LIMIT and limited, f"limiter after recovery: {status_counts(answers)}"
    assert answers[-1].status == 429


# -- 2. Postgres -----------------------------------------------------------------------------------


async def test_postgres_down_stale_reads_503_writes_and_every_acknowledged_delivery_is_stored(
    stack: Stack, world: World, requests: Requests, fault_report: FaultRecord
) -> None:
    """Postgres stopped for EDGEFN_FAULT_SECONDS, then started again on the same port.

    Expected while it is down: cached reads (dashboard, recommendations, their entries made
    stale by a version bump as a write would) are served from the stale entry (200, the
    data cached before); presign, which needs no database, 200; writes (batch-swipe,
    events) and the inbox 503; webhook deliveries 503, so the provider retries, each within
    the webhook deadline. Throughout: no 5xx but 503, nothing past DEADLINE_S. After: the
    pools reconnect without a restart (same worker processes, every route 2xx within
    RECOVERY_S, and upload-media, which had no database traffic during the outage, answers
    its first requests); every delivery answered 2xx is stored and applied, and retrying the
    others stores each exactly once."""
    fault_report.fault = "postgres down"
    rng = random.Random(2)
    readers = world.users[:20]
    cached = {}
    warm = Load(stack.base_url)
    for u in readers:
        first = await warm.send(requests.dashboard(u))
        assert first.status == 200 and (await warm.send(requests.deck(u))).status == 200
        cached[u] = first.json()["data"]
    pids = await worker_pids(stack.base_url)
    assert len(pids) == 2, f"both workers should answer before the outage: {pids}"
    hook_users = await world.new_users(webhook_users_needed(BEFORE_S + FAULT_SECONDS + AFTER_S))
    sent: dict[str, Call] = {}  # webhook user -> the delivery (the provider retries it as it was)
    mix = background_mix(requests, world, hook_users, readers=readers, seed=2,
                         on_webhook=lambda c: sent.setdefault(c.key, c))
    kv = redis.Redis.from_url(stack.redis_url)
    async with Load(stack.base_url, mix) as load:
        fault_report.loads.append(load)
        await asyncio.sleep(BEFORE_S)
        async with outage(stack, stack.pg) as o:
            # a write made just now would bump these versions: every read must now compute, fail, serve stale
            pipe = kv.pipeline()
            for u in readers:
                pipe.incr(f"{stack.key_prefix}:ver:dashboard:{u}")
                pipe.incr(f"{stack.key_prefix}:ver:deck:{u}")
            await asyncio.to_thread(pipe.execute)
            o.down = time.monotonic()  # the outage proper starts once the entries are stale
        await asyncio.sleep(AFTER_S)
    kv.close()
    samples = load.samples

    answered_in_time(samples)
    bad = unexpected([s for s in samples if o.before(s)], dict.fromkeys(by_route(samples), OK))
    assert not bad, f"failures before the fault: {bad}"
    during = [s for s in samples if o.during(s)]
    each_route_seen(during, set(by_route(samples)), "while Postgres was down")
    bad = unexpected(during, {
        "dashboard": {200}, "recommendations": {200}, "presign": {200},
        "batch-swipe": {503}, "events": {503}, "inbox": {503}, "webhook": {503},
    })  # fmt: skip
    assert not bad, f"routes that did not answer as required while Postgres was down: {bad}"
    reads = [s for s in during if s.route in ("dashboard", "recommendations")]
    labels = Counter(s.json()["metadata"]["cache_status"] for s in reads)
    fault_report.notes["cache_status_during"] = dict(labels)
    assert set(labels) <= {"stale", "hit"} and labels["stale"] > 0, labels
    wrong = [s.key for s in during if s.route == "dashboard" and s.json()["data"] != cached[s.key]]
    assert not wrong, f"dashboards served during the outage differ from the cached ones: {wrong[:3]}"
    hooks = [s for s in samples if s.route == "webhook"]
    slowest = max(s.ms for s in hooks)
    assert slowest < WEBHOOK_DEADLINE_S * 1000, f"a webhook took {slowest:.0f} ms"

    recovered = recovery_seconds(samples, o.up, lambda s: s.status in OK)
    fault_report.notes["recovery_s"] = round(recovered, 2)
    assert recovered < RECOVERY_S, f"routes still failing {recovered:.1f} s after Postgres was back"
    after = await worker_pids(stack.base_url)
    assert after == pids, f"a worker was restarted: the pools did not reconnect alone ({pids} before, {after} after)"
    acked = {s.key for s in hooks if s.status in OK}
    stored = await deliveries(world.dsn, list(sent))
    missing = [u for u in acked if stored.get(u) != ["applied"]]
    assert not missing, f"{len(missing)} deliveries answered 2xx are not stored and applied: {missing[:3]}"
    # the provider retries what was not acknowledged
    retrier = Load(stack.base_url)
    retried = [await retrier.send(sent[u]) for u in sent if u not in acked]
    fault_report.notes["webhooks_retried"] = len(retried)
    assert retried and all(s.status == 200 for s in retried), status_counts(retried)
    stored = await deliveries(world.dsn, list(sent))
    assert {u: stored.get(u) for u in sent} == dict.fromkeys(sent, ["applied"]), "a delivery is missing or doubled"

    # every function's pool serves again, also one that had no database traffic while Postgres
    # was down (upload-media's, whose idle connections died with the old server): on each
    # worker, more calls in a row than its pool holds connections (each takes the next idle one)
    per_worker = await Load(stack.base_url).on_each_worker(lambda: requests.media(rng.choice(world.users)), 15)
    probes = [s for ss in per_worker.values() for s in ss]
    failed = unexpected(probes, {"media list": {200}})
    fault_report.notes["media_list_after"] = status_counts(probes)
    assert len(per_worker) == 2, f"reached workers {list(per_worker)}"
    assert not failed, f"{time.monotonic() - o.up:.0f} s after Postgres was back, upload-media still fails: {failed}"


async def deliveries(dsn: str, users: list[str]) -> dict[str, list[str]]:
    """user -> outcomes of the deliveries naming that user."""
    out: dict[str, list[str]] = {}
    for r in await rows(dsn, "select user_id::text as u, outcome from public.webhook_deliveries "
                             "where user_id = any(%s::uuid[]) order by id", (users,)):
        out.setdefault(r["u"], []).append(r["outcome"])
    return out


# -- 3. push providers and Realtime ----------------------------------------------------------------


async def test_push_and_realtime_failing_the_outbox_holds_events_and_delivers_each_exactly_once(
    stack: Stack, world: World, requests: Requests, fault_report: FaultRecord
) -> None:
    """FCM, APNs and Realtime answer 500 for EDGEFN_FAULT_SECONDS while events are ingested
    (with the background load, and the scheduled drain every 0.5 s), then recover.

    Expected: every event is accepted (202) during the failure; nothing is delivered while
    the providers fail (the deliveries wait in the outbox, attempts are made and fail);
    after recovery every event reaches each recipient's Realtime topic exactly once and each
    of their devices (one FCM, one APNs) exactly once, and every delivery row is `sent`."""
    fault_report.fault = "push and realtime providers failing"
    recipients = await world.new_users(6)
    devices: dict[str, list[tuple[str, str]]] = {}
    for u in recipients:
        fcm, apns = f"fcm-faults-{uuid.uuid4().hex}", os.urandom(32).hex()
        await rows(world.dsn, "insert into public.device_tokens (user_id, platform, token) values "
                              "(%s, 'fcm', %s), (%s, 'apns', %s)", (u, fcm, u, apns))
        devices[u] = [("fcm", fcm), ("apns", apns)]
    rng = random.Random(3)
    hook_users = await world.new_users(webhook_users_needed(FAULT_SECONDS + 5))
    background = background_mix(requests, world, hook_users, seed=3)
    recipient_of: dict[str, str] = {}

    def event() -> Call:  # the event id is the signed message id (a uuid): the call's key
        recipient = rng.choice(recipients)
        call = requests.event([recipient], preview=uuid.uuid4().hex[:8])
        recipient_of[call.key] = recipient
        return call

    events = Load(stack.base_url, event, rate=5)
    drains = Load(stack.base_url, requests.drain, rate=2)
    fault_report.loads += [events, drains]

    await asyncio.to_thread(stack.providers.mode, fcm="fail", apns="fail", realtime="fail")
    try:
        async with Load(stack.base_url, background, rate=RATE - 7) as load, drains:  # + 5 events, 2 drains
            fault_report.loads.append(load)
            async with events:
                await asyncio.sleep(FAULT_SECONDS)
            held = {s.key: recipient_of[s.key] for s in events.samples if s.status == 202}
            during = await event_rows(world.dsn, list(held))
            records_during = await asyncio.to_thread(provider_records, stack)
    finally:
        await asyncio.to_thread(stack.providers.mode, fcm="ok", apns="ok", realtime="ok")

    answered_in_time(load.samples + events.samples)
    assert status_counts(events.samples).keys() == {"202"}, status_counts(events.samples)
    assert held, "no event was accepted"
    statuses_during = Counter(r["status"] for r in during)
    fault_report.notes["deliveries_when_recovering"] = dict(statuses_during)
    assert statuses_during["sent"] == 0, f"recorded as sent while every provider failed: {statuses_during}"
    assert not any(e in held for e, _ in accepted_sends(records_during)), "a provider accepted a held event"
    failed_attempts = [r for r in records_during if r["provider"] in ("realtime", "fcm", "apns") and r["status"] >= 500]
    assert failed_attempts, "no provider call failed: the outage was not exercised"

    # recovery: the drain keeps running until every held delivery is sent (or 30 s pass)
    async with Load(stack.base_url, requests.drain, rate=2) as drains_after:
        fault_report.loads.append(drains_after)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = await event_rows(world.dsn, list(held))
            if all(r["status"] == "sent" for r in after):
                break
            await asyncio.sleep(0.5)
    assert Counter(r["status"] for r in after) == {"sent": 3 * len(held)}, Counter(r["status"] for r in after)

    sends = accepted_sends(await asyncio.to_thread(provider_records, stack))
    wrong = []
    for event_id, recipient in held.items():
        for channel, target in [("realtime", f"user:{recipient}"), *devices[recipient]]:
            if sends[(event_id, target)] != 1:
                wrong.append((event_id, channel, sends[(event_id, target)]))
    fault_report.notes["events"] = len(held)
    assert not wrong, f"{len(wrong)} deliveries not made exactly once (event, channel, times): {wrong[:5]}"


def accepted_sends(records: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(event id, Realtime topic or device token) -> how many times a provider accepted it."""
    sends: Counter[tuple[str, str]] = Counter()
    for r in records:
        if r["provider"] == "realtime" and r["status"] in (200, 202):
            for m in r["body"]["messages"]:
                sends[(str(m["payload"].get("event_id")), m["topic"])] += 1
        elif r["provider"] == "fcm" and r["status"] == 200:
            for e in r["body"]["message"]["data"]["event_ids"].split(","):
                sends[(e, r["token"])] += 1
        elif r["provider"] == "apns" and r["status"] == 200:
            for e in r["body"]["event_ids"]:
                sends[(e, r["token"])] += 1
    return sends


async def event_rows(dsn: str, event_ids: list[str]) -> list[dict[str, Any]]:
    return await rows(dsn, "select event_id::text, channel, target, status from public.event_deliveries "
                           "where event_id = any(%s::uuid[]) and channel in ('realtime', 'push')", (event_ids,))


def provider_records(stack: Stack) -> list[dict[str, Any]]:
    import httpx

    r = httpx.get(stack.providers.url + "/_records", timeout=30)
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


# -- 4. a worker killed mid-request ----------------------------------------------------------------


async def test_a_worker_killed_mid_request_leaves_no_partial_writes(
    stack: Stack, world: World, requests: Requests, fault_report: FaultRecord
) -> None:
    """SIGKILL a uvicorn worker (the one holding most of the load's connections) three
    times, 2.5 s apart, while batch-swipes, webhook deliveries and inline uploads run
    (uvicorn starts a new worker each time).

    Expected: some requests are cut off (no answer); the others answer 2xx, or 503 (a clean
    refusal that writes nothing; seen now and then while a replacement worker starts),
    never another 5xx; in the database,
    every batch of swipes is entirely there with its idempotency record, or not at all;
    the matches are exactly the mutual likes, each with one match.created event; every
    webhook user has either the whole delivery (stored, applied, subscription, paid tier,
    subscription.changed event) or none of it, and no Redis tier without it; every media
    row has its object in the bucket, with its size. Retrying what was cut off (same
    idempotency key, same delivery) completes it. Two workers serve again afterwards."""
    fault_report.fault = "worker SIGKILL mid-request"
    rng = random.Random(4)
    swipers = await world.new_users(36)
    batches: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for u in swipers:
        targets = [t for t in swipers if t != u]
        rng.shuffle(targets)
        for i in range(0, len(targets), 5):
            items = [(t, rng.choices(("like", "superlike", "pass"), (6, 1, 3))[0]) for t in targets[i : i + 5]]
            batches[f"faults-{uuid.uuid4().hex}"] = (u, items)
    queue = iter(rng.sample(list(batches), len(batches)))
    hook_users = await world.new_users(200)
    hooks = iter(hook_users)
    calls: dict[str, Call] = {}

    def keep(call: Call) -> Call:
        calls[call.key] = call
        return call

    def swipe() -> Call:
        key = next(queue)
        return keep(requests.swipes(batches[key][0], batches[key][1], key=key))

    uploaders = world.users[:10]
    mix = Mix({
        "batch-swipe": (15, swipe),
        "webhook": (10, lambda: keep(requests.webhook(next(hooks)))),
        "upload": (10, lambda: requests.upload(rng.choice(uploaders))),
        "dashboard": (5, lambda: requests.dashboard(rng.choice(world.users))),
    }, seed=4)  # fmt: skip
    killed: list[int] = []
    async with Load(stack.base_url, mix, rate=40) as load:
        fault_report.loads.append(load)
        await asyncio.sleep(2.0)
        for _ in range(3):
            live = await worker_pids(stack.base_url, budget=1.0)  # one may still be starting
            # the load's busiest worker; any live one when no kept-alive connection is idle just now
            victim = await load.busiest_worker() or rng.choice(sorted(live))
            assert victim in live and victim != os.getpid()
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            await asyncio.sleep(2.5)
        await asyncio.sleep(1.0)
    samples = load.samples
    fault_report.notes["killed"] = len(killed)

    cut = [s for s in samples if s.status is None]
    fault_report.notes["cut_off"] = len(cut)
    assert cut, "no request was in flight when the workers were killed: the test proves nothing"
    answered = [s for s in samples if s.status is not None]
    fault_report.notes["refused"] = unexpected(answered, dict.fromkeys(by_route(samples), OK))
    bad = unexpected(answered, dict.fromkeys(by_route(samples), OK | {503}))
    assert not bad, f"answers other than 2xx and 503: {bad}"
    assert max(s.ms for s in answered) < DEADLINE_S * 1000

    # two workers again, neither of them a killed one
    deadline = time.monotonic() + 30
    pids = await worker_pids(stack.base_url)
    while (len(pids) < 2 or pids & set(killed)) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        pids = await worker_pids(stack.base_url)
    assert len(pids) == 2 and not pids & set(killed), f"workers after the kills: {pids} (killed {killed})"

    sent_batches = [s.key for s in samples if s.route == "batch-swipe"]
    await check_swipes(world.dsn, swipers, {k: batches[k] for k in sent_batches},
                       acked={s.key for s in samples if s.route == "batch-swipe" and s.status == 200})
    sent_hooks = [s.key for s in samples if s.route == "webhook"]
    await check_webhooks(stack, sent_hooks, acked={s.key for s in samples if s.route == "webhook" and s.status == 200})
    orphans = await check_media(stack, uploaders, [s for s in samples if s.route == "upload" and s.status == 201])
    fault_report.notes["orphan_objects"] = orphans

    # the client's and the provider's retries complete what was cut off or refused
    retrier = Load(stack.base_url)
    retried = [await retrier.send(calls[s.key]) for s in samples if s.key in calls and s.status != 200]
    assert all(s.status == 200 for s in retried), status_counts(retried)
    await check_swipes(world.dsn, swipers, {k: batches[k] for k in sent_batches},
                       acked=set(sent_batches))
    await check_webhooks(stack, sent_hooks, acked=set(sent_hooks))


async def check_swipes(dsn: str, users: list[str], batches: dict[str, tuple[str, list[tuple[str, str]]]],
                       acked: set[str]) -> None:
    """Each batch all there (with its idempotency record and response) or not at all; every
    acknowledged one there; matches exactly the mutual likes, one match.created event each."""
    swipes = {(r["s"], r["t"]): r["action"] for r in await rows(
        dsn, "select swiper_id::text as s, target_id::text as t, action from public.swipes "
             "where swiper_id = any(%s::uuid[])", (users,))}
    recorded = {r["k"]: r["empty"] for r in await rows(
        dsn, "select idempotency_key as k, response = '{}'::jsonb as empty from public.swipe_requests "
             "where user_id = any(%s::uuid[])", (users,))}
    partial = []
    for key, (swiper, items) in batches.items():
        present = sum(swipes.get((swiper, t)) == a for t, a in items)
        whole = key in recorded and not recorded[key] and present == len(items)
        nothing = key not in recorded and present == 0
        if not (whole or nothing) or (key in acked and not whole):
            partial.append((key, present, len(items), recorded.get(key)))
    assert not partial, f"{len(partial)} batches half written (key, swipes present, of, record empty): {partial[:3]}"

    likes = {pair for pair, a in swipes.items() if a in ("like", "superlike")}
    mutual = {frozenset(p) for p in likes if (p[1], p[0]) in likes}
    matches = await rows(dsn, "select id::text, user_a::text as a, user_b::text as b from public.matches "
                              "where user_a = any(%s::uuid[]) or user_b = any(%s::uuid[])", (users, users))
    assert Counter(frozenset((m["a"], m["b"])) for m in matches) == Counter(mutual), "matches are not the mutual likes"
    announced = Counter(r["m"] for r in await rows(
        dsn, "select payload->>'match_id' as m from public.outbox where event_type = 'match.created' "
             "and payload->>'match_id' = any(%s)", ([m["id"] for m in matches],)))
    assert announced == Counter(m["id"] for m in matches), "a match without exactly one match.created event"


async def check_webhooks(stack: Stack, users: list[str], acked: set[str]) -> None:
    """Per webhook user: the whole delivery (stored applied, one subscription, paid tier, a
    subscription.changed event, the tier in Redis or queued for it) or none of it."""
    dsn = stack.dsn
    state = {r["u"]: r for r in await rows(dsn, """
        select u::text as u,
               (select array_agg(outcome) from public.webhook_deliveries d where d.user_id = u) as deliveries,
               (select count(*) from public.subscriptions s where s.user_id = u) as subscriptions,
               (select tier from public.user_tiers t where t.user_id = u) as tier,
               (select count(*) from public.outbox o where o.event_type = 'subscription.changed'
                   and u = any(o.recipients)) as events,
               exists (select 1 from public.tier_sync_pending p where p.user_id = u) as queued
          from unnest(%s::uuid[]) as u""", (users,))}  # fmt: skip
    kv = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        tiers = kv.mget([f"{stack.key_prefix}:tier:{{{u}}}" for u in users]) if users else []
    finally:
        kv.close()
    partial = []
    for u, redis_tier in zip(users, tiers, strict=True):
        s = state[u]
        whole = (s["deliveries"] == ["applied"] and s["subscriptions"] == 1 and s["tier"] == "paid"
                 and s["events"] >= 1 and (redis_tier == "paid" or s["queued"]))
        nothing = s["deliveries"] is None and s["subscriptions"] == 0 and s["tier"] == "free" and s["events"] == 0 \
            and redis_tier != "paid"
        if not (whole or nothing) or (u in acked and not whole):
            partial.append({**s, "redis": redis_tier})
    assert not partial, f"{len(partial)} webhook deliveries half applied: {partial[:3]}"


async def check_media(stack: Stack, owners: list[str], created: list[Sample]) -> int:
    """Every media row has its object with its size; every 201 has its row. Returns the
    objects that have no row (a kill between the PUT and the insert leaves one behind)."""
    media = await rows(stack.dsn, "select object_key, size_bytes from public.media_objects "
                                  "where owner_id = any(%s::uuid[])", (owners,))
    client, bucket = stack.s3.client, stack.s3.bucket

    def objects() -> dict[str, int]:
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="avatars/"):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    stored = await asyncio.to_thread(objects)
    missing = [m["object_key"] for m in media if stored.get(m["object_key"]) != m["size_bytes"]]
    assert not missing, f"{len(missing)} media rows without their object: {missing[:3]}"
    keys = {m["object_key"] for m in media}
    unrecorded = [s.json()["data"]["key"] for s in created if s.json()["data"]["key"] not in keys]
    assert not unrecorded, f"uploads answered 201 without a row: {unrecorded[:3]}"
    return len([k for k in stored if k.split("/")[1] in owners and k not in keys])
