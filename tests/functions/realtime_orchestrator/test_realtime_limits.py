"""Realtime's limits as its server applies them (the stand-in: a 60 s average of 5 s ticks,
the batch counted on top, 422 for the whole batch when one message is invalid, no
Retry-After), with the stand-in and the orchestrator on one test clock: the drain adapts
its pace and batch size, isolates the bad message, gives throttling its own budget, and
reports its backlog age."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import psycopg
import pytest

from tests.factories import create_user
from tests.functions.realtime_orchestrator.conftest import FakeClock
from tests.functions.realtime_orchestrator.fakes import ProviderFake


async def enqueue_many(database_url: str, users: list[str], per_user: int, payload: dict[str, Any] | None = None) -> None:
    """`per_user` likes for each user, in one transaction (the users have no devices: Realtime only)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        async with conn.transaction():
            for i in range(per_user):
                for u in users:
                    await conn.execute("select public.enqueue_event('like.received', %s::jsonb, array[%s]::uuid[])",
                                       (psycopg.types.json.Jsonb({"i": i, **(payload or {})}), u))


async def undelivered(database_url: str, users: list[str]) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "select (select count(*) from public.outbox where processed_at is null) + count(*) "
            "from public.event_deliveries where user_id = any(%s::uuid[]) and status in ('pending', 'leased')", (users,))
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def drain_until_done(orch: Any, clock: FakeClock, database_url: str, users: list[str], limit_s: float) -> float:
    """Drains as the schedule would (a drain ends when the pace says wait more than a
    second; the next one starts half a second later) until all is delivered. The test
    clock's seconds taken."""
    started = clock()
    while await undelivered(database_url, users) and clock() - started < limit_s:
        await orch.drain(budget=60)
        clock.advance(0.5)
    return clock() - started


@pytest.fixture
def plan_clock(fake: ProviderFake, clock: FakeClock) -> FakeClock:
    fake.clock = clock  # the stand-in's rate counters tick on the test's clock
    return clock


async def test_a_free_plan_shared_with_other_traffic_is_used_without_collapsing(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, plan_clock: FakeClock
) -> None:
    """A plan of 20 messages/s of which other clients use 10 (the Free plan's proportions,
    scaled down to keep the test short): everything arrives once and in order, close to
    the remaining rate, with few 429s."""
    fake.realtime.plan(max_events_per_second=20, other_rate=10)
    plan_clock.advance(60)  # the other traffic has filled the provider's window
    users = [await create_user(database_url) for _ in range(10)]
    await enqueue_many(database_url, users, 30)
    orch = make_orchestrator(realtime_messages_per_second=20, realtime_batch_size=100)
    took = await drain_until_done(orch, plan_clock, database_url, users, limit_s=600)

    topics = {f"user:{u}" for u in users}
    mine = [m for m in fake.broadcasts() if m["topic"] in topics]
    assert len(mine) == 300 and len({(m["topic"], m["payload"]["event_id"]) for m in mine}) == 300
    for u in users:
        assert [m["payload"]["data"]["i"] for m in mine if m["topic"] == f"user:{u}"] == list(range(30))
    answers = Counter(r["status"] for r in fake.attempts("realtime"))
    assert answers[429] <= 0.03 * sum(answers.values()), answers
    assert 300 / took >= 0.75 * 10, took  # the benchmark holds the real figure (>= 90 %)
    # the batch followed the rate: one message a request at ~10/s (0.05 s of it), not 100
    assert max(len(r["body"]["messages"]) for r in fake.accepted("realtime")) <= 2


async def test_only_what_the_pace_grants_is_claimed(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, plan_clock: FakeClock
) -> None:
    u = await create_user(database_url)
    await enqueue_many(database_url, [u], 5)
    orch = make_orchestrator(realtime_messages_per_second=2)
    await orch.drain(budget=5, max_rounds=1)
    rows = sorted((r for r in await deliveries_of(database_url, u)), key=lambda r: r["id"])
    assert [r["status"] for r in rows] == ["sent", "sent", "pending", "pending", "pending"]  # a first second: 2
    assert [r["attempts"] for r in rows] == [1, 1, 0, 0, 0]  # never leased, never handed back
    await orch.drain(budget=5)  # the pace refills on the test clock: 2 a second
    assert [m["payload"]["data"]["i"] for m in fake.broadcasts() if m["topic"] == f"user:{u}"] == list(range(5))


async def deliveries_of(database_url: str, user: str) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("select * from public.event_deliveries where user_id = %s and channel = 'realtime'", (user,))
        return await cur.fetchall()


async def test_an_invalid_message_is_isolated_and_only_it_is_dead_with_the_reason(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, plan_clock: FakeClock
) -> None:
    fake.realtime.plan(max_payload_size_in_kb=1)  # a 1 KB payload limit, to make one too large
    users = [await create_user(database_url) for _ in range(30)]
    await enqueue_many(database_url, users[:-1], 1)
    await enqueue_many(database_url, users[-1:], 1, {"blob": "x" * 2000})
    orch = make_orchestrator(realtime_batch_size=100, realtime_batch_seconds=1.0)
    report = await orch.drain(budget=10)

    rows = {str(r["user_id"]): r for u in users for r in await deliveries_of(database_url, u)}
    bad = rows[users[-1]]
    assert bad["status"] == "dead" and bad["attempts"] == 1
    assert "Payload size exceeds tenant limit" in bad["last_error"] and "refused alone" in bad["last_error"]
    assert {r["status"] for u, r in rows.items() if u != users[-1]} == {"sent"}
    topics = Counter(m["topic"] for m in fake.broadcasts())
    assert all(topics[f"user:{u}"] == 1 for u in users[:-1]) and topics[f"user:{users[-1]}"] == 0
    assert report.isolated == 1 and report.sent["realtime"] == 29
    assert report.realtime_batches <= 1 + 2 * 5  # 30 messages: five halvings
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("select outcome, status_code from public.event_delivery_attempts where delivery_id = %s",
                                 (bad["id"],))
        assert await cur.fetchall() == [("dead", 422)]


async def test_throttling_spends_its_own_budget_then_the_delivery_is_dead(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, plan_clock: FakeClock
) -> None:
    u = await create_user(database_url)
    await enqueue_many(database_url, [u], 1)
    fake.mode["realtime"] = "throttle"
    orch = make_orchestrator(max_throttles=4, throttle_base_seconds=1, throttle_max_seconds=8, max_attempts=2)
    for _ in range(12):
        await orch.drain(budget=5, wait=False)
        plan_clock.advance(10)
    [row] = await deliveries_of(database_url, u)
    assert row["status"] == "dead" and row["throttles"] == 4
    assert row["last_error"].startswith("throttled 4 times")
    assert len(fake.attempts("realtime")) == 4  # one request per pause, then no more


async def test_backlog_age_is_reported_by_the_drain_and_the_cli(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, plan_clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edgefn import outbox_cli

    u = await create_user(database_url)
    await enqueue_many(database_url, [u], 3)
    fake.mode["realtime"] = "throttle"
    orch = make_orchestrator(throttle_base_seconds=1, throttle_max_seconds=2)
    first = await orch.drain(budget=5, wait=False)
    assert first.backlog_age_s["realtime"] < 1.0 and first.throttled_requests == 1
    plan_clock.advance(30)
    later = await orch.drain(budget=5, wait=False)
    assert 30.0 <= later.backlog_age_s["realtime"] < 32.0  # the oldest due message's wait, not its retry time
    fake.mode["realtime"] = "ok"
    plan_clock.advance(3)
    done = await orch.drain(budget=5)
    assert "realtime" not in done.backlog_age_s and done.sent["realtime"] == 3

    import argparse

    from functions.realtime_orchestrator.drain import Orchestrator

    fake.mode["realtime"] = "throttle"
    await enqueue_many(database_url, [u], 1)
    await Orchestrator(orch.services, orch.settings).drain(budget=5, wait=False)  # the CLI's clock: the real one
    parser = argparse.ArgumentParser()
    outbox_cli.add_arguments(parser)
    await asyncio.sleep(1.1)  # the CLI ages rows by the database's clock
    # the command blocks (its own connection): run it off the loop, as a user runs it
    assert await asyncio.to_thread(outbox_cli.run, parser.parse_args(["status", "--database-url", database_url])) == 0
    assert "backlog age: realtime" in capsys.readouterr().out


async def test_the_service_role_key_is_required_for_private_topics(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, orch_settings: dict[str, Any]
) -> None:
    """Realtime answers 202 to a private broadcast from a role that may not write to
    realtime.messages, and drops it: the settings refuse a key that says another role."""
    import jwt

    from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
    from shared.settings import ConfigError

    anon = jwt.encode({"role": "anon", "iss": "supabase"}, "x" * 32, algorithm="HS256")
    with pytest.raises(ConfigError, match="SUPABASE_SERVICE_ROLE_KEY: .*role 'anon'"):
        RealtimeOrchestratorSettings.load(env={}, **{**orch_settings, "supabase_service_role_key": anon})
    service = jwt.encode({"role": "service_role", "iss": "supabase"}, "x" * 32, algorithm="HS256")
    assert RealtimeOrchestratorSettings.load(env={}, **{**orch_settings, "supabase_service_role_key": service})

    # what the guard prevents: the anon key gets 202 and nothing is delivered
    u = await create_user(database_url)
    await enqueue_many(database_url, [u], 1)
    orch = make_orchestrator(supabase_service_role_key="anon-key")  # an opaque key the stand-in knows as anon
    await orch.drain(budget=5)
    assert [r["status"] for r in fake.attempts("realtime")] == [202]
    assert fake.broadcasts() == [] and len(fake.realtime.dropped) == 1
    [row] = await deliveries_of(database_url, u)
    assert row["status"] == "sent"


async def test_a_refused_key_opens_the_breaker_and_alerts_and_loses_nothing(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, clock: FakeClock
) -> None:
    from shared.observability import metrics

    u = await create_user(database_url)
    await enqueue_many(database_url, [u], 3)
    before = metrics.snapshot().get("alert.realtime", 0)
    orch = make_orchestrator(supabase_service_role_key="a-key-realtime-does-not-know")
    await orch.drain(budget=5)
    assert [r["status"] for r in fake.attempts("realtime")] == [401]  # then the breaker is open
    assert orch.outbound.breaker("realtime").state == "open"
    assert metrics.snapshot().get("alert.realtime", 0) == before + 1
    rows = await deliveries_of(database_url, u)
    assert {r["status"] for r in rows} == {"pending"}
    fixed = make_orchestrator()  # the key is fixed (a new deployment)
    clock.advance(60)
    await fixed.drain(budget=5)
    assert len([m for m in fake.broadcasts() if m["topic"] == f"user:{u}"]) == 3
