"""Writes that change nothing queue nothing (0017a): no outbox event, no cache invalidation,
no realtime send, whoever sends them and however often. Driven through the REST path (role
`authenticated` + claims in one transaction) and as the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from shared.context import Principal
from shared.db import Database
from tests import factories as f


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, max_size=2)
    yield database
    await database.close()


async def events_for(dsn: str, users: list[str]) -> list[tuple[str, dict[str, Any], list[str]]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "select event_type, payload, recipients::text[] from public.outbox"
            " where recipients && %s::uuid[] order by id",
            (users,),
        )
        return await cur.fetchall()


async def updated_at(dsn: str, me: str) -> list[Any]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "select (select updated_at from public.profiles where id = %(u)s),"
            " (select updated_at from public.budgets where user_id = %(u)s),"
            " (select updated_at from public.goals where user_id = %(u)s)",
            {"u": me},
        )
        return list(await cur.fetchone() or ())


NOOP_UPDATES = [
    "update public.purchases set amount = amount, category = category, description = description,"
    " purchased_at = purchased_at where user_id = %(u)s",
    "update public.budgets set monthly_limit = monthly_limit, currency = currency where user_id = %(u)s",
    "update public.goals set title = title, current_amount = current_amount, status = status where user_id = %(u)s",
    "update public.profiles set monthly_budget = monthly_budget, currency = currency, timezone = timezone,"
    " bio = bio, lat = lat, lon = lon where id = %(u)s",
]


async def test_fifty_noop_updates_queue_nothing(db: Database, database_url: str) -> None:
    me = await f.create_user(database_url, monthly_budget=300)
    await f.add_purchase(database_url, me, 10)
    await f.set_budget(database_url, me, 100)
    await f.add_goal(database_url, me)
    before, stamps = await events_for(database_url, [me]), await updated_at(database_url, me)
    principal = Principal(user_id=me, role="authenticated")
    for _ in range(50):
        async with db.as_user(principal) as conn:
            for sql in NOOP_UPDATES:
                cur = await conn.execute(sql, {"u": me})
                assert cur.rowcount == 1, sql  # the rows were there and writable: only nothing changed
    assert await events_for(database_url, [me]) == before
    assert await updated_at(database_url, me) == stamps

    # one real change: exactly one event, for this user, and the stamp moves
    async with db.as_user(principal) as conn:
        await conn.execute("update public.goals set current_amount = current_amount + 1 where user_id = %s", (me,))
    new = (await events_for(database_url, [me]))[len(before):]
    assert new == [("dashboard.invalidate", {"table": "goals", "op": "update"}, [me])]
    assert (await updated_at(database_url, me))[2] != stamps[2]


async def test_a_bulk_update_addresses_only_the_users_it_changed(db: Database, database_url: str) -> None:
    users = [await f.create_user(database_url) for _ in range(4)]
    for uid, category in zip(users, ("album", "merch", "album", "merch"), strict=True):
        await f.add_purchase(database_url, uid, 5, category=category)
    before = await events_for(database_url, users)
    async with db.as_service() as conn:
        cur = await conn.execute("update public.purchases set category = 'merch' where user_id = any(%s)", (users,))
        assert cur.rowcount == 4
    new = (await events_for(database_url, users))[len(before):]
    assert new == [("dashboard.invalidate", {"table": "purchases", "op": "update"}, sorted([users[0], users[2]]))]
    # the same statement again changes nobody
    async with db.as_service() as conn:
        await conn.execute("update public.purchases set category = 'merch' where user_id = any(%s)", (users,))
    assert len(await events_for(database_url, users)) == len(before) + 1
