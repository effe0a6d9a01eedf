"""Outbox -> routing -> Realtime / FCM / APNs, against the local provider fake: what the
providers received (content, order, batching, deduplication), retries, dead letters, dead
tokens, throttling and the circuit breaker."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from functions.realtime_orchestrator.pacing import REALTIME_TICK
from tests.factories import add_match, create_user
from tests.functions.realtime_orchestrator.conftest import (
    FakeClock, add_device, deliveries, enqueue, set_prefs,
)
from tests.functions.realtime_orchestrator.fakes import ProviderFake


def mine(items: list[dict[str, Any]], topics: set[str]) -> list[dict[str, Any]]:
    return [m for m in items if m["topic"] in topics]


async def test_a_match_reaches_both_users_on_realtime_and_every_device(
    database_url: str, fake: ProviderFake, make_orchestrator: Any
) -> None:
    a = await create_user(database_url)
    b = await create_user(database_url)
    match_id = await add_match(database_url, a, b)
    _, a_fcm = await add_device(database_url, a, "fcm")
    _, b_apns = await add_device(database_url, b, "apns")
    # batch-swipe's way: enqueue_event in the transaction the service runs for the swiping user
    event_id = await enqueue(database_url, "match.created", {"match_id": match_id}, [a, b], actor=a)

    orch = make_orchestrator()
    report = await orch.drain(budget=5)

    topics = {f"user:{a}", f"user:{b}"}
    got = mine(fake.broadcasts(), topics)
    assert sorted(m["topic"] for m in got) == sorted(topics)
    for m in got:
        assert m["event"] == "match.created" and m["private"] is True
        assert m["payload"]["event_id"] == event_id and m["payload"]["data"] == {"match_id": match_id}
        assert isinstance(m["payload"]["id"], int)  # the inbox cursor
    fcm = [p for p in fake.pushes() if p.get("token") == a_fcm]
    apns = [p for p in fake.pushes() if p.get("token") == b_apns]
    assert len(fcm) == 1 and len(apns) == 1
    msg = fcm[0]["body"]["message"]
    assert msg["notification"]["title"] == "It's a match!"
    assert msg["data"]["event_ids"] == event_id and msg["android"]["priority"] == "HIGH"
    assert apns[0]["headers"]["apns-priority"] == "10" and apns[0]["body"]["event_ids"] == [event_id]
    rows = await deliveries(database_url, event_id)
    assert {(r["channel"], r["status"]) for r in rows} == {("realtime", "sent"), ("push", "sent")}
    assert len(rows) == 4 and report.sent["push"] >= 2


async def test_a_user_cannot_announce_a_match_that_does_not_exist(
    database_url: str, fake: ProviderFake, make_orchestrator: Any
) -> None:
    a = await create_user(database_url)
    victim = await create_user(database_url)
    await add_device(database_url, victim, "fcm")
    # users cannot call enqueue_event (tests/sql/test_rls.py); should code acting for a user
    # ever write a made-up pair, the routing rules still refuse it
    forged = await enqueue(database_url, "match.created", {}, [a, victim], actor=a)
    spam = await enqueue(database_url, "like.received", {}, [victim], actor=a)
    await make_orchestrator().drain(budget=5)
    assert await deliveries(database_url, forged) == [] and await deliveries(database_url, spam) == []
    assert mine(fake.broadcasts(), {f"user:{victim}"}) == []
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("select event_id::text, last_error from public.outbox where event_id = any(%s::uuid[])",
                                 ([forged, spam],))
        errors = dict(await cur.fetchall())
    assert "not a match" in errors[forged] and "may not be emitted" in errors[spam]



async def attempts_of(database_url: str, event_id: str) -> list[tuple[str, str, int | None]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "select d.channel, a.outcome, a.status_code from public.event_delivery_attempts a "
            "join public.event_deliveries d on d.id = a.delivery_id where d.event_id = %s order by a.id", (event_id,))
        return [tuple(r) for r in await cur.fetchall()]  # type: ignore[misc]


async def test_normal_pushes_within_the_window_coalesce_into_one(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    u = await create_user(database_url)
    _, token = await add_device(database_url, u, "fcm")
    orch = make_orchestrator(batch_window_seconds=60)
    ids = []
    for i in range(3):
        ids.append(await enqueue(database_url, "like.received", {"n": i}, [u]))
        await orch.drain(budget=5)
        clock.advance(10)
    # Realtime went at once, in order; the pushes wait for the window to close
    assert [m["payload"]["event_id"] for m in mine(fake.broadcasts(), {f"user:{u}"})] == ids
    assert [p for p in fake.pushes() if p["token"] == token] == []
    clock.advance(31)  # 61 s after the first like
    await orch.drain(budget=5)
    pushes = [p for p in fake.pushes() if p["token"] == token]
    assert len(pushes) == 1
    msg = pushes[0]["body"]["message"]
    assert msg["notification"]["title"] == "3 new likes"
    assert msg["data"]["event_ids"].split(",") == ids and msg["data"]["count"] == "3"
    assert msg["android"]["priority"] == "NORMAL"
    # the next like opens a new batch
    later = await enqueue(database_url, "like.received", {}, [u])
    await orch.drain(budget=5)
    clock.advance(61)
    await orch.drain(budget=5)
    pushes = [p for p in fake.pushes() if p["token"] == token]
    assert len(pushes) == 2 and pushes[1]["body"]["message"]["data"]["event_ids"] == later
    assert pushes[1]["body"]["message"]["notification"]["title"] == "New like"


async def test_quiet_hours_hold_pushes_in_the_users_time_zone_but_not_realtime(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    a = await create_user(database_url)
    b = await create_user(database_url)
    match_id = await add_match(database_url, a, b)
    _, token = await add_device(database_url, a, "apns")
    seoul = ZoneInfo("Asia/Seoul")
    local = datetime.fromtimestamp(clock(), seoul)
    start = (local - timedelta(hours=1)).time().replace(second=0, microsecond=0)
    end = (local + timedelta(hours=2)).time().replace(second=0, microsecond=0)
    await set_prefs(database_url, a, quiet_start=start, quiet_end=end, timezone="Asia/Seoul")
    event_id = await enqueue(database_url, "match.created", {"match_id": match_id}, [a, b])
    orch = make_orchestrator()
    await orch.drain(budget=5)
    assert len(mine(fake.broadcasts(), {f"user:{a}"})) == 1
    assert [p for p in fake.pushes() if p["token"] == token] == []
    push = next(r for r in await deliveries(database_url, event_id) if r["channel"] == "push")
    expected_end = datetime.combine(
        local.date() + (timedelta(days=1) if end < local.time() else timedelta()), end, tzinfo=seoul)
    assert push["status"] == "pending" and push["available_at"] == expected_end
    clock.advance((expected_end - datetime.fromtimestamp(clock(), seoul)).total_seconds() - 5)
    await orch.drain(budget=5)
    assert [p for p in fake.pushes() if p["token"] == token] == []
    clock.advance(6)
    await orch.drain(budget=5)
    assert len([p for p in fake.pushes() if p["token"] == token]) == 1


async def test_channel_switches_and_low_priority(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    from tests.factories import add_media

    u = await create_user(database_url)
    _, token = await add_device(database_url, u, "fcm")
    await set_prefs(database_url, u, channels={"push": {"like.received": False}, "realtime": {"message.received": False}})
    like = await enqueue(database_url, "like.received", {}, [u])
    msg = await enqueue(database_url, "message.received", {"preview": "hi"}, [u])
    media = await add_media(database_url, u)
    upload = await enqueue(database_url, "upload.ready", {"media_id": media}, [u], actor=u)
    orch = make_orchestrator()
    await orch.drain(budget=5)
    clock.advance(120)
    await orch.drain(budget=5)
    assert {r["channel"] for r in await deliveries(database_url, like)} == {"realtime"}
    assert {r["channel"] for r in await deliveries(database_url, msg)} == {"push"}
    assert {r["channel"] for r in await deliveries(database_url, upload)} == {"realtime"}  # low: in-app only
    pushes = [p for p in fake.pushes() if p["token"] == token]
    assert [p["body"]["message"]["notification"]["body"] for p in pushes] == ["hi"]


async def test_breaking_news_is_real_time_for_paid_and_a_digest_for_free(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    from tests.factories import add_artist, follow

    paid = await create_user(database_url, tier="paid")
    free = await create_user(database_url, tier="free")
    artist = await add_artist(database_url, "BLACKPINK")
    for u in (paid, free):
        await follow(database_url, u, artist)
    _, paid_tok = await add_device(database_url, paid, "fcm")
    _, free_tok = await add_device(database_url, free, "fcm")
    orch = make_orchestrator(digest_window_seconds=3600)
    for headline in ("World tour", "New single"):
        await enqueue(database_url, "artist.breaking", {"artist_id": artist, "artist_name": "BLACKPINK", "headline": headline}, [])
    await orch.drain(budget=5)
    news = [m for m in fake.broadcasts() if m["event"] == "artist.breaking"]
    assert len(mine(news, {f"user:{paid}"})) == 2
    assert mine(news, {f"user:{free}"}) == []
    assert [p["body"]["message"]["notification"]["title"] for p in fake.pushes() if p["token"] == paid_tok] == \
        ["Breaking: BLACKPINK", "Breaking: BLACKPINK"]
    assert [p for p in fake.pushes() if p["token"] == free_tok] == []
    clock.advance(3601)
    await orch.drain(budget=5)
    digest = [p for p in fake.pushes() if p["token"] == free_tok]
    assert len(digest) == 1
    assert digest[0]["body"]["message"]["notification"]["title"] == "2 updates from artists you follow"


async def test_daily_push_cap(database_url: str, fake: ProviderFake, make_orchestrator: Any) -> None:
    u = await create_user(database_url)
    _, fcm_tok = await add_device(database_url, u, "fcm")
    _, apns_tok = await add_device(database_url, u, "apns")
    await set_prefs(database_url, u, push_daily_cap=2)
    ids = [await enqueue(database_url, "message.received", {"preview": f"m{i}"}, [u]) for i in range(3)]
    await make_orchestrator().drain(budget=5)
    # two notifications, each on both devices; the third suppressed; Realtime unaffected
    assert len([p for p in fake.pushes() if p["token"] == fcm_tok]) == 2
    assert len([p for p in fake.pushes() if p["token"] == apns_tok]) == 2
    assert len(mine(fake.broadcasts(), {f"user:{u}"})) == 3
    statuses = [sorted(r["status"] for r in await deliveries(database_url, e) if r["channel"] == "push") for e in ids]
    assert statuses == [["sent", "sent"], ["sent", "sent"], ["suppressed", "suppressed"]]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("select sum(sent) from public.push_daily_counts where user_id = %s", (u,))
        assert (await cur.fetchone()) == (2,)


async def test_a_failed_push_is_retried_with_backoff_and_sent_once(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    u = await create_user(database_url)
    _, token = await add_device(database_url, u, "fcm")
    event_id = await enqueue(database_url, "message.received", {"preview": "x"}, [u])
    fake.mode["fcm"] = "fail"
    orch = make_orchestrator(retry_base_seconds=2)
    await orch.drain(budget=5)
    push = next(r for r in await deliveries(database_url, event_id) if r["channel"] == "push")
    assert push["status"] == "pending" and push["attempts"] == 1 and "INTERNAL" in push["last_error"]
    wait = (push["available_at"].timestamp() - clock())
    assert 1.0 <= wait <= 2.0  # 2 s, jittered down by up to half
    fake.mode["fcm"] = "ok"
    await orch.drain(budget=5)  # not due yet
    assert [p for p in fake.pushes() if p["token"] == token] == []
    clock.advance(2.1)
    await orch.drain(budget=5)
    assert len([p for p in fake.pushes() if p["token"] == token]) == 1
    assert [a for a in await attempts_of(database_url, event_id) if a[0] == "push"] == [
        ("push", "retry", 500), ("push", "sent", 200)]
    clock.advance(3600)
    await orch.drain(budget=5)
    assert len([p for p in fake.pushes() if p["token"] == token]) == 1


async def test_retries_end_in_the_dead_letter_state(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    u = await create_user(database_url)
    _, token = await add_device(database_url, u, "apns")
    event_id = await enqueue(database_url, "message.received", {"preview": "x"}, [u])
    fake.mode["apns"] = "fail"
    orch = make_orchestrator(max_attempts=3, retry_base_seconds=1)
    for _ in range(5):
        await orch.drain(budget=5)
        clock.advance(10)
    push = next(r for r in await deliveries(database_url, event_id) if r["channel"] == "push")
    assert push["status"] == "dead" and push["attempts"] == 3
    assert [a[1] for a in await attempts_of(database_url, event_id) if a[0] == "push"] == ["retry", "retry", "dead"]
    assert len([r for r in fake.attempts("apns") if r.get("token") == token]) == 3


async def test_dead_device_tokens_are_deactivated(
    database_url: str, fake: ProviderFake, make_orchestrator: Any
) -> None:
    u = await create_user(database_url)
    fcm_id, fcm_tok = await add_device(database_url, u, "fcm")
    apns_id, apns_tok = await add_device(database_url, u, "apns")
    live_id, live_tok = await add_device(database_url, u, "apns")
    fake.fcm.dead_tokens.add(fcm_tok)  # 404 UNREGISTERED
    fake.apns.dead_tokens.add(apns_tok)  # 410 Unregistered
    first = await enqueue(database_url, "message.received", {"preview": "1"}, [u])
    orch = make_orchestrator()
    await orch.drain(budget=5)
    rows = {r["target"]: r["status"] for r in await deliveries(database_url, first) if r["channel"] == "push"}
    assert rows == {fcm_id: "dropped", apns_id: "dropped", live_id: "sent"}
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("select id::text, active from public.device_tokens where user_id = %s", (u,))
        assert dict(await cur.fetchall()) == {fcm_id: False, apns_id: False, live_id: True}
    second = await enqueue(database_url, "message.received", {"preview": "2"}, [u])
    await orch.drain(budget=5)
    assert {r["target"] for r in await deliveries(database_url, second) if r["channel"] == "push"} == {live_id}
    assert len([p for p in fake.pushes() if p["token"] == live_tok]) == 2


async def test_realtime_429_backs_off_without_spending_attempts_and_keeps_order(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    u = await create_user(database_url)
    ids = [await enqueue(database_url, "like.received", {"i": i}, [u]) for i in range(5)]
    fake.mode["realtime"] = "throttle"  # Realtime's 429 carries no Retry-After
    orch = make_orchestrator(throttle_base_seconds=1)
    await orch.drain(budget=5, wait=False)
    rows = [r for e in ids for r in await deliveries(database_url, e) if r["channel"] == "realtime"]
    assert {r["status"] for r in rows} == {"pending"} and {r["attempts"] for r in rows} == {0}
    assert {r["throttles"] for r in rows} == {1}  # the throttle budget, not an attempt
    # the 1 s base is shorter than one tick of Realtime's average (5 s): a tick, jittered
    assert all(REALTIME_TICK / 2 <= r["available_at"].timestamp() - clock() <= REALTIME_TICK for r in rows)
    fake.mode["realtime"] = "ok"
    clock.advance(REALTIME_TICK + 0.1)
    await orch.drain(budget=5)
    assert [m["payload"]["event_id"] for m in mine(fake.broadcasts(), {f"user:{u}"})] == ids
    assert {a[1] for e in ids for a in await attempts_of(database_url, e)} == {"throttled", "sent"}


async def test_realtime_batches_respect_the_batch_size_in_order(
    database_url: str, fake: ProviderFake, make_orchestrator: Any
) -> None:
    users = [await create_user(database_url) for _ in range(5)]
    # no prepared statements: a pooler in transaction mode (pytest -m pgbouncer) cannot keep them
    async with await psycopg.AsyncConnection.connect(database_url, prepare_threshold=None) as conn:
        async with conn.transaction():
            for i in range(50):
                await conn.execute("select public.enqueue_event('like.received', %s::jsonb, %s::uuid[])",
                                   (f'{{"i": {i}}}', users))
    await make_orchestrator(realtime_batch_size=100, delivery_batch_size=500, outbox_batch_size=500).drain(budget=10)
    topics = {f"user:{u}" for u in users}
    batches = [[m for m in r["body"]["messages"] if m["topic"] in topics] for r in fake.accepted("realtime")]
    batches = [b for b in batches if b]
    assert [len(b) for b in batches] == [100, 100, 50]
    for u in users:
        seq = [m["payload"]["data"]["i"] for b in batches for m in b if m["topic"] == f"user:{u}"]
        assert seq == list(range(50))


async def test_the_circuit_breaker_stops_calls_to_a_failing_provider_and_nothing_is_lost(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    users = [await create_user(database_url) for _ in range(8)]
    tokens = [(await add_device(database_url, u, "fcm"))[1] for u in users]
    events = [await enqueue(database_url, "message.received", {"preview": str(i)}, [u]) for i, u in enumerate(users)]
    fake.mode["fcm"] = "fail"
    orch = make_orchestrator(push_concurrency=1, retry_base_seconds=1)
    await orch.drain(budget=5)
    assert len([r for r in fake.attempts("fcm") if r.get("token") in tokens]) == 5  # then the circuit opened
    assert orch.outbound.breaker("fcm").state == "open"
    for _ in range(5):  # while open: no calls at all, and no attempts spent
        clock.advance(5)
        await orch.drain(budget=5)
    assert len([r for r in fake.attempts("fcm") if r.get("token") in tokens]) == 5
    fake.mode["fcm"] = "ok"  # the provider recovers; the breaker lets a trial through
    clock.advance(10)
    await orch.drain(budget=5)
    clock.advance(60)
    await orch.drain(budget=5)
    accepted = [p["token"] for p in fake.pushes() if p["token"] in tokens]
    assert sorted(accepted) == sorted(tokens)  # every device exactly once
    for e in events:
        push = next(r for r in await deliveries(database_url, e) if r["channel"] == "push")
        assert push["status"] == "sent" and push["attempts"] <= 2


async def test_concurrent_drainers_send_each_event_to_each_target_once(
    database_url: str, fake: ProviderFake, make_orchestrator: Any
) -> None:
    users = [await create_user(database_url) for _ in range(10)]
    tokens = {u: (await add_device(database_url, u, "fcm" if i % 2 else "apns"))[1] for i, u in enumerate(users)}
    ids = []
    for i in range(30):
        ids.append(await enqueue(database_url, "message.received", {"preview": str(i)}, [users[i % 10], users[(i + 1) % 10]]))
    drainers = [make_orchestrator(outbox_batch_size=4, delivery_batch_size=5) for _ in range(4)]
    await asyncio.gather(*(d.drain(budget=10) for d in drainers))
    topics = {f"user:{u}" for u in users}
    got = [(m["topic"], m["payload"]["event_id"]) for m in mine(fake.broadcasts(), topics)]
    assert len(got) == 60 and len(set(got)) == 60
    sent = []
    for p in fake.pushes():
        if p["token"] in tokens.values():
            body = p["body"]
            ev = body["message"]["data"]["event_ids"] if "message" in body else ",".join(body["event_ids"])
            sent.append((p["token"], ev))
    assert len(sent) == 60 and len(set(sent)) == 60


async def test_an_expired_lease_is_taken_over_and_the_late_finish_is_ignored(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    from functions.realtime_orchestrator.drain import DrainReport, Done

    u = await create_user(database_url)
    event_id = await enqueue(database_url, "like.received", {}, [u])
    crashed = make_orchestrator(lease_seconds=30)
    await crashed.route(DrainReport())
    claimed = [r for r in await crashed.claim("realtime") if r["event_id"] == event_id]
    assert len(claimed) == 1  # ... and then the drainer dies
    other = make_orchestrator()
    await other.drain(budget=5)
    assert mine(fake.broadcasts(), {f"user:{u}"}) == []  # leased: not touched
    clock.advance(31)
    await other.drain(budget=5)
    assert len(mine(fake.broadcasts(), {f"user:{u}"})) == 1
    # the first drainer's late answer changes nothing
    assert await crashed.finish([Done(claimed[0]["id"], "dead", error="late")], DrainReport(), "realtime") == 1
    row = next(r for r in await deliveries(database_url, event_id) if r["channel"] == "realtime")
    assert row["status"] == "sent" and row["attempts"] == 2


async def test_dashboard_invalidation_bumps_the_users_dashboard_cache(
    database_url: str, fake: ProviderFake, make_orchestrator: Any
) -> None:
    from tests.factories import add_purchase

    u = await create_user(database_url)
    orch = make_orchestrator()
    cache = orch.services.response_cache
    before = int(await orch.services.kv.get(cache.version_key(f"dashboard:{u}")) or 0)
    # optimized-dashboard's trigger writes dashboard.invalidate in the purchase's transaction
    await add_purchase(database_url, u, 25)
    await orch.drain(budget=5)
    after = int(await orch.services.kv.get(cache.version_key(f"dashboard:{u}")) or 0)
    assert after == before + 1
    assert [m["event"] for m in mine(fake.broadcasts(), {f"user:{u}"})] == ["dashboard.invalidate"]


async def test_no_send_starts_once_the_lease_is_half_gone(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    users = [await create_user(database_url) for _ in range(6)]
    tokens = [(await add_device(database_url, u, "fcm"))[1] for u in users]
    events = [await enqueue(database_url, "message.received", {"preview": "x"}, [u]) for u in users]
    fake.mode["fcm"] = ("slow", 0.3)
    orch = make_orchestrator(push_concurrency=1, lease_seconds=1)
    await orch.drain(budget=5, max_rounds=1)
    first = len([p for p in fake.pushes() if p["token"] in tokens])
    assert 1 <= first <= 3  # 0.5 s of sends at 0.3 s each, then the rest is handed back
    rows = [next(r for r in await deliveries(database_url, e) if r["channel"] == "push") for e in events]
    assert sorted(r["status"] for r in rows).count("sent") == first
    assert all(r["attempts"] == (1 if r["status"] == "sent" else 0) for r in rows)
    fake.mode["fcm"] = "ok"
    clock.advance(1)
    await orch.drain(budget=5)
    assert sorted(p["token"] for p in fake.pushes() if p["token"] in tokens) == sorted(tokens)


async def test_provider_credentials_are_cached_and_renewed_when_refused(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    u = await create_user(database_url)
    _, token = await add_device(database_url, u, "fcm")
    orch = make_orchestrator(retry_base_seconds=5)
    for i in range(3):
        await enqueue(database_url, "message.received", {"preview": str(i)}, [u])
    await orch.drain(budget=5)
    assert len([p for p in fake.pushes() if p["token"] == token]) == 3
    assert len(fake.accepted("oauth")) == 1  # one token exchange for every push
    fake.fcm.issued.clear()  # Google revokes the access token
    event_id = await enqueue(database_url, "message.received", {"preview": "again"}, [u])
    await orch.drain(budget=5)
    assert [a[1:] for a in await attempts_of(database_url, event_id) if a[0] == "push"] == [("retry", 401)]
    clock.advance(6.1)
    await orch.drain(budget=5)
    assert len(fake.accepted("oauth")) == 2
    assert [a[1:] for a in await attempts_of(database_url, event_id) if a[0] == "push"] == [("retry", 401), ("sent", 200)]


async def test_apns_gets_its_own_http2_only_client_sharing_the_breakers(orch_settings: dict[str, Any]) -> None:
    """APNs is HTTP/2 only (the stand-in answers 505 to anything else, so every APNs push in
    these tests went over HTTP/2): the sender has its own HTTP/2-only client, whose breakers
    are the process's and follow its configured limits."""
    import httpx

    from functions.realtime_orchestrator.providers import apns_from_settings
    from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
    from shared.resilience import OutboundHTTP

    settings = RealtimeOrchestratorSettings.load(env={}, **orch_settings)
    from shared import tls

    async with tls.client() as plain:
        shared_out = OutboundHTTP(plain, failure_threshold=2, reset_timeout=7.0)
        sender = apns_from_settings(settings, shared_out, clock=lambda: 0.0)
        assert sender is not None and sender.outbound is not shared_out
        try:
            pool = sender.outbound.client._transport._pool
            assert (pool._http1, pool._http2) == (False, True)
            assert sender.outbound.breakers is shared_out.breakers
            breaker = sender.outbound.breaker("apns")
            assert (breaker.failure_threshold, breaker.reset_timeout) == (2, 7.0)
            assert shared_out.breakers["apns"] is breaker
        finally:
            await sender.outbound.client.aclose()
