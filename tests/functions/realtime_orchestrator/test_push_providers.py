"""Pushes against FCM and APNs stand-ins that answer as the providers document: collapse keys
per kind of notification, device tokens dropped only on the explicit answers, configuration
errors that alert instead of deactivating, throttles that back off (growing, or for at least
the provider's minimum), and APNs provider tokens minted at most every 20 minutes per key,
one for every instance."""

from __future__ import annotations

import os
import uuid
from collections import OrderedDict
from typing import Any

import psycopg
import pytest

from tests.factories import add_match, create_user
from tests.functions.realtime_orchestrator.conftest import FakeClock, add_device, deliveries, enqueue
from tests.functions.realtime_orchestrator.fakes import ProviderFake


def push_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in rows if r["channel"] == "push")


async def active(database_url: str, device_id: str) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("select active from public.device_tokens where id = %s", (device_id,))
        row = await cur.fetchone()
    assert row is not None
    return bool(row[0])


# -- collapse keys ---------------------------------------------------------------------------------


async def test_collapse_keys_name_the_kind_of_notification_not_the_message(
    database_url: str, fake: ProviderFake, make_orchestrator: Any
) -> None:
    a = await create_user(database_url)
    b = await create_user(database_url)
    match_id = await add_match(database_url, a, b)
    _, fcm = await add_device(database_url, a, "fcm")
    _, apns = await add_device(database_url, a, "apns")
    conversation = str(uuid.uuid4())
    await enqueue(database_url, "message.received", {"preview": "hi", "conversation_id": conversation}, [a])
    await enqueue(database_url, "message.received", {"preview": "again", "conversation_id": conversation}, [a])
    await enqueue(database_url, "match.created", {"match_id": match_id}, [a, b])
    await make_orchestrator().drain(budget=5)

    android = [p["body"]["message"]["android"] for p in fake.pushes() if p["token"] == fcm]
    assert sorted(x["collapse_key"] for x in android) == sorted([f"message:{conversation}"] * 2 + ["match"])
    assert [x["notification"]["tag"] for x in android] == [x["collapse_key"] for x in android]
    ios = [p["headers"] for p in fake.pushes() if p["token"] == apns]
    assert sorted(h["apns-collapse-id"] for h in ios) == sorted([f"message:{conversation}"] * 2 + ["match"])
    assert len({h["apns-id"] for h in ios}) == 3  # each notification its own id


async def test_an_offline_android_device_keeps_the_latest_of_each_kind(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    """FCM keeps 4 collapse keys per offline device: with one key per message, the fifth
    notification on would be lost silently; with one per kind, the device gets the latest
    of each kind when it comes back."""
    u = await create_user(database_url)
    _, token = await add_device(database_url, u, "fcm")
    fake.fcm.offline[token] = OrderedDict()  # the device is offline
    conversations = [str(uuid.uuid4()) for _ in range(2)]
    for i in range(8):
        await enqueue(database_url, "message.received",
                      {"preview": f"m{i}", "conversation_id": conversations[i % 2]}, [u])
    await enqueue(database_url, "subscription.changed", {"user_id": u, "tier": "paid"}, [])
    orch = make_orchestrator(push_coalescing=False)
    await orch.drain(budget=5)
    clock.advance(61)  # the plan change is normal priority: it waits for the batching window
    await orch.drain(budget=5)
    assert len([p for p in fake.pushes() if p["token"] == token]) == 9
    kept = fake.fcm.online(token)
    assert fake.fcm.collapse_dropped == []
    assert sorted(m["notification"]["body"] for m in kept) == ["Your plan is now paid", "m6", "m7"]


# -- device tokens: dropped only on explicit answers ------------------------------------------------


@pytest.mark.parametrize(("platform", "case", "dropped"), [
    ("fcm", "unregistered", True),          # 404 UNREGISTERED
    ("fcm", "invalid-token", True),         # 400 "not a valid FCM registration token"
    ("fcm", "wrong-project", False),        # 404 NOT_FOUND without UNREGISTERED
    ("fcm", "sender-id-mismatch", False),   # 403: the credentials are another sender's
    ("fcm", "html-404", False),             # a proxy's page, not FCM
    ("apns", "unregistered", True),         # 410 Unregistered
    ("apns", "bad-device-token", True),     # 400 BadDeviceToken
    ("apns", "wrong-topic", False),         # 400 DeviceTokenNotForTopic: our topic is wrong
])
async def test_a_device_token_is_dropped_only_when_the_provider_says_it_is_dead(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, platform: str, case: str, dropped: bool
) -> None:
    from shared.observability import metrics

    u = await create_user(database_url)
    token = {"invalid-token": "not-an-fcm-token", "bad-device-token": "zz-not-hex"}.get(case)
    device_id, token = await add_device(database_url, u, platform, token)
    overrides: dict[str, Any] = {}
    if case == "unregistered":
        (fake.fcm if platform == "fcm" else fake.apns).dead_tokens.add(token)
    elif case == "wrong-project":
        overrides["fcm_project_id"] = "someone-elses-project"
    elif case == "sender-id-mismatch":
        fake.fcm.foreign_tokens.add(token)
    elif case == "html-404":
        fake.mode["fcm"] = ("garbage", 404, "text/html", "<!DOCTYPE html><title>Error 404 (Not Found)!!1</title>")
    elif case == "wrong-topic":
        overrides["apns_topic"] = "com.example.other"
    alerts = metrics.snapshot().get(f"alert.{platform}", 0)
    event_id = await enqueue(database_url, "message.received", {"preview": "x"}, [u])
    orch = make_orchestrator(**overrides)
    await orch.drain(budget=5)

    push = push_of(await deliveries(database_url, event_id))
    assert await active(database_url, device_id) is not dropped
    if dropped:
        assert push["status"] == "dropped"
        assert metrics.snapshot().get(f"alert.{platform}", 0) == alerts
    else:
        # nothing deactivated: the breaker is open, someone is alerted, the push waits
        assert push["status"] == "pending" and push["attempts"] == 1
        assert orch.outbound.breaker(platform).state == "open"
        assert metrics.snapshot().get(f"alert.{platform}", 0) == alerts + 1


async def test_a_misconfiguration_deactivates_nothing_however_many_devices(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    users = [await create_user(database_url) for _ in range(12)]
    devices = [await add_device(database_url, u, "fcm") for u in users]
    for u in users:
        await enqueue(database_url, "message.received", {"preview": "x"}, [u])
    orch = make_orchestrator(fcm_project_id="someone-elses-project", push_concurrency=1)
    for _ in range(4):
        await orch.drain(budget=5)
        clock.advance(31)  # the breaker lets one trial through after its reset
    assert all([await active(database_url, d) for d, _ in devices])
    assert len(fake.attempts("fcm")) <= 4  # one call, then one trial per reset


# -- throttling ------------------------------------------------------------------------------------


async def test_fcm_quota_exceeded_pauses_every_fcm_push_for_at_least_a_minute(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    users = [await create_user(database_url) for _ in range(4)]
    tokens = [(await add_device(database_url, u, "fcm"))[1] for u in users]
    fake.clock = clock
    fake.fcm.quota_per_minute = 1  # this minute's quota: one message
    events = [await enqueue(database_url, "message.received", {"preview": str(i)}, [u])
              for i, u in enumerate(users[:3])]
    orch = make_orchestrator(push_concurrency=1, throttle_max_seconds=10)
    await orch.drain(budget=5)
    rows = [push_of(await deliveries(database_url, e)) for e in events]
    assert sorted(r["status"] for r in rows) == ["pending", "pending", "sent"]
    for r in rows:
        if r["status"] == "pending":  # 429 QUOTA_EXCEEDED: at least a minute (over the 10 s ceiling)
            assert r["attempts"] == 0 and r["throttles"] == 1
            assert r["available_at"].timestamp() - clock() >= 60.0 - 1e-3
    calls = len(fake.attempts("fcm"))
    # a push that comes in during the pause waits for it too, without a call
    late = await enqueue(database_url, "message.received", {"preview": "late"}, [users[3]])
    clock.advance(30)
    await orch.drain(budget=5, wait=False)
    assert len(fake.attempts("fcm")) == calls
    waiting = push_of(await deliveries(database_url, late))
    assert waiting["status"] == "pending" and waiting["attempts"] == 0 and waiting["throttles"] == 0
    assert waiting["available_at"].timestamp() - clock() >= 29.0
    clock.advance(31)
    fake.fcm.quota_per_minute = 600_000  # the quota is back
    await orch.drain(budget=5)
    assert sorted(p["token"] for p in fake.pushes() if p["token"] in tokens) == sorted(tokens)


async def test_an_fcm_5xx_retry_after_is_honoured(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    u = await create_user(database_url)
    await add_device(database_url, u, "fcm")
    fake.mode["fcm"] = "unavailable"
    fake.fcm.retry_after = "120"
    event_id = await enqueue(database_url, "message.received", {"preview": "x"}, [u])
    await make_orchestrator(retry_base_seconds=1).drain(budget=5)
    push = push_of(await deliveries(database_url, event_id))
    assert push["status"] == "pending" and push["attempts"] == 1
    assert push["available_at"].timestamp() - clock() >= 120.0 - 1e-3  # (microseconds)


async def test_a_device_throttled_again_and_again_waits_longer_each_time(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    """APNs 429 TooManyRequests (one device token, no Retry-After): that device's push backs
    off, doubling, jittered; the other devices are not held back."""
    u, other = await create_user(database_url), await create_user(database_url)
    _, busy = await add_device(database_url, u, "apns")
    _, calm = await add_device(database_url, other, "apns")
    fake.apns.device_limits[busy] = 0
    event_id = await enqueue(database_url, "message.received", {"preview": "x"}, [u])
    calm_event = await enqueue(database_url, "message.received", {"preview": "y"}, [other])
    orch = make_orchestrator(throttle_base_seconds=1, throttle_max_seconds=60)
    waits = []
    for _ in range(5):
        await orch.drain(budget=5, wait=False)
        push = push_of(await deliveries(database_url, event_id))
        waits.append(push["available_at"].timestamp() - clock())
        clock.advance(waits[-1] + 0.01)
    for n, w in enumerate(waits, start=1):
        assert 2 ** (n - 1) / 2 - 0.01 <= w <= 2 ** (n - 1) + 0.01, waits
    assert push["throttles"] == 5 and push["attempts"] == 0
    assert push_of(await deliveries(database_url, calm_event))["status"] == "sent"
    assert [p["token"] for p in fake.pushes()] == [calm]


async def test_a_slow_apns_answer_times_out_alone_on_the_shared_connection(
    database_url: str, fake: ProviderFake, make_orchestrator: Any
) -> None:
    """Pushes share one HTTP/2 connection, and httpcore fails every stream of a connection
    whose socket read timed out. Each push's deadline is its own, enforced by cancelling it
    (`OutboundHTTP.multiplexed`: the transport read never times out), so a push sent later
    and answered in time is not failed by an earlier one's silence."""
    import asyncio

    from functions.realtime_orchestrator.providers import PushMessage

    slow, quick = os.urandom(32).hex(), os.urandom(32).hex()
    fake.apns.slow_tokens.update({slow: 6.0, quick: 1.0})
    sender = make_orchestrator(push_timeout_seconds=2.0).sender("apns")

    def message(token: str) -> PushMessage:
        return PushMessage(token=token, title="t", body="b", event_type="message.received", event_ids=("e",),
                           count=1, urgent=True, message_id=str(uuid.uuid4()), collapse_key="message")

    async def later() -> Any:
        await asyncio.sleep(1.3)  # answered at 2.3 s, a second after it was sent
        return await sender.send(message(quick))

    first, second = await asyncio.gather(sender.send(message(slow)), later())
    assert first.outcome == "retry" and "did not answer within 2.0s" in (first.error or "")
    assert second.outcome == "sent", second


# -- APNs provider tokens ----------------------------------------------------------------------------


async def test_instances_share_one_provider_token_through_redis(
    database_url: str, fake: ProviderFake, make_orchestrator: Any
) -> None:
    users = [await create_user(database_url) for _ in range(6)]
    for u in users:
        await add_device(database_url, u, "apns")
        await enqueue(database_url, "message.received", {"preview": "x"}, [u])
    instances = [make_orchestrator(delivery_batch_size=2) for _ in range(3)]  # three processes' worth
    import asyncio

    await asyncio.gather(*(o.drain(budget=10) for o in instances))
    assert len(fake.apns.tokens_seen) == 1 and fake.apns.token_updates_refused == 0
    assert sum(o.sender("apns").tokens.minted for o in instances) == 1  # type: ignore[union-attr]
    assert len([p for p in fake.pushes() if p["provider"] == "apns"]) == 6


async def test_a_refused_token_is_not_reminted_before_twenty_minutes(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    """Apple says ExpiredProviderToken (its clock runs ahead of ours, say): the token is kept,
    the push waits until the token is 20 minutes old, then a new one is minted and accepted."""
    from functions.realtime_orchestrator.drain import Orchestrator

    fake.clock = clock
    u = await create_user(database_url)
    await add_device(database_url, u, "apns")
    base = make_orchestrator()
    orch = Orchestrator(base.services, base.settings, clock=clock, sleep=clock.sleep, outbound=base.outbound,
                        credential_clock=clock)
    first = await enqueue(database_url, "message.received", {"preview": "1"}, [u])
    await orch.drain(budget=5)
    assert push_of(await deliveries(database_url, first))["status"] == "sent"
    fake.apns.max_token_age = 5 * 60
    clock.advance(6 * 60)
    second = await enqueue(database_url, "message.received", {"preview": "2"}, [u])
    await orch.drain(budget=5, wait=False)
    push = push_of(await deliveries(database_url, second))
    assert push["status"] == "pending" and "ExpiredProviderToken" in push["last_error"]
    assert push["available_at"].timestamp() - clock() >= 14 * 60 - 1  # until the token is 20 minutes old
    assert len(fake.apns.tokens_seen) == 1  # not reminted
    clock.advance(14 * 60)
    await orch.drain(budget=5)
    assert push_of(await deliveries(database_url, second))["status"] == "sent"
    assert len(fake.apns.tokens_seen) == 2 and fake.apns.token_updates_refused == 0


async def test_without_redis_each_instance_mints_its_own_and_apns_refuses_the_extra(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    """The documented limit of running without Redis: one token per instance, so a second
    instance's token within 20 minutes is refused (429). The push is throttled, not lost."""
    users = [await create_user(database_url) for _ in range(2)]
    events = []
    for u in users:
        await add_device(database_url, u, "apns")
        events.append(await enqueue(database_url, "message.received", {"preview": "x"}, [u]))
    no_redis = {"redis_url": "redis://127.0.0.1:1/0", "redis_timeout_ms": 100}
    a = make_orchestrator(delivery_batch_size=1, **no_redis)
    b = make_orchestrator(delivery_batch_size=1, **no_redis)
    await a.drain(budget=5, max_rounds=1)
    await b.drain(budget=5, max_rounds=1)
    assert fake.apns.token_updates_refused == 1 and len(fake.apns.tokens_seen) == 1
    rows = [push_of(await deliveries(database_url, e)) for e in events]
    assert sorted(r["status"] for r in rows) == ["pending", "sent"]
    assert [r["throttles"] for r in rows if r["status"] == "pending"] == [1]
