"""The dashboard's cache: hit / 304, round trips, invalidation by our functions and by the
database's triggers, and what a database outage looks like (stale, or a 503 envelope)."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from functions.optimized_dashboard.handler import fn
from functions.optimized_dashboard.invalidation import EVENT_TYPE, invalidate_dashboard, version_scope
from functions.optimized_dashboard.settings import OptimizedDashboardSettings
from shared.db import Database
from shared.services import Services
from tests import factories as f
from tests.functions.optimized_dashboard.conftest import URL, principal


def services_of(dash: Any) -> Services:
    return fn.services


async def test_hit_costs_no_postgres_and_one_redis_round_trip(dash: Any, database_url: str, make_token: Any) -> None:
    uid = await f.create_user(database_url)
    token = make_token(uid)
    s = services_of(dash)
    miss = await dash(token, range="year")
    assert miss.headers["x-cache-status"] == "miss" and miss.headers["cache-control"] == "private, no-cache"
    assert "Authorization" in miss.headers["vary"]
    db0, kv0 = s.db.round_trips, s.kv.round_trips
    hit = await dash(token, range="year")
    assert (s.db.round_trips - db0, s.kv.round_trips - kv0) == (0, 1)
    assert hit.json()["metadata"]["cache_status"] == "hit" and hit.json()["data"] == miss.json()["data"]
    assert hit.json()["metadata"]["generated_at"] == miss.json()["metadata"]["generated_at"]
    assert hit.json()["metadata"]["rate_limit"]["remaining"] == miss.json()["metadata"]["rate_limit"]["remaining"] - 1
    not_modified = await dash(token, range="year", headers={"If-None-Match": hit.headers["etag"]})
    assert not_modified.status_code == 304 and not_modified.content == b""
    # one Postgres round trip for a miss; the range is part of the key
    db0 = s.db.round_trips
    assert (await dash(token, range="week")).headers["x-cache-status"] == "miss"
    assert s.db.round_trips - db0 == 1


async def test_our_writes_bump_the_version(dash: Any, database_url: str, make_token: Any) -> None:
    uid = await f.create_user(database_url)
    token = make_token(uid)
    first = await dash(token)
    await f.add_purchase(database_url, uid, "12.34", purchased_at=datetime.now(UTC) - timedelta(minutes=1))
    assert (await dash(token)).json()["data"] == first.json()["data"]  # cached: not seen yet
    assert await invalidate_dashboard(services_of(dash), uid) is True
    after = await dash(token, headers={"If-None-Match": first.headers["etag"]})
    assert after.status_code == 200 and after.headers["etag"] != first.headers["etag"]
    assert after.json()["metadata"]["cache_status"] == "miss"
    assert after.json()["data"]["user_stats"]["total_spent"] == "12.34"


async def test_database_writes_enqueue_an_invalidation_for_the_orchestrator(database_url: str) -> None:
    """A write through PostgREST (as the user) or by the service puts `dashboard.invalidate`
    in the outbox in the same transaction, addressed to the users it touched; the
    orchestrator's rule for it bumps `version_scope(user)` (its `cache` channel)."""
    me = await f.create_user(database_url)
    other = await f.create_user(database_url)
    db = Database(database_url, max_size=1)
    try:
        async with db.as_user(principal(me)) as conn:
            await conn.execute(
                "insert into public.purchases (user_id, amount, category) values (%s, 5, 'album'), (%s, 6, 'merch')",
                (me, me),
            )
            await conn.execute("insert into public.budgets (user_id, monthly_limit) values (%s, 50)", (me,))
            await conn.execute("update public.profiles set timezone = 'Asia/Tokyo' where id = %s", (me,))
        async with db.as_service() as conn:  # one statement over two users: one event
            # a column the dashboard does not read (server-owned: only the service writes it)
            await conn.execute("update public.profiles set last_active_at = now() where id = %s", (me,))
            await conn.execute("insert into public.purchases (user_id, amount, category) values (%s, 7, 'album')", (other,))
            await conn.execute("update public.purchases set category = 'other' where user_id = any(%s)", ([me, other],))
            await conn.execute("insert into public.goals (user_id, title, target_amount) values (%s, 'x', 9)", (other,))
    finally:
        await db.close()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "select payload, recipients::text[], actor_id::text from public.outbox "
            "where event_type = %s and recipients && %s::uuid[] order by id",
            (EVENT_TYPE, [me, other]),
        )
        events = await cur.fetchall()
    assert events == [
        ({"table": "purchases", "op": "insert"}, [me], me),
        ({"table": "budgets", "op": "insert"}, [me], me),
        ({"table": "profiles", "op": "update"}, [me], me),
        ({"table": "purchases", "op": "insert"}, [other], None),
        ({"table": "purchases", "op": "update"}, sorted([me, other], key=uuid.UUID), None),
        ({"table": "goals", "op": "insert"}, [other], None),
    ]
    assert version_scope(me) == f"dashboard:{me}"  # the scope the orchestrator's rule names


async def test_a_failed_write_enqueues_nothing(database_url: str) -> None:
    me = await f.create_user(database_url)
    db = Database(database_url, max_size=1)
    try:
        async with db.as_user(principal(me)) as conn:
            await conn.execute("insert into public.purchases (user_id, amount, category) values (%s, 5, 'album')", (me,))
            await conn.execute("rollback")
            await conn.execute("begin")
    finally:
        await db.close()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("select count(*) from public.outbox where %s = any(recipients)", (me,))
        assert await cur.fetchone() == (0,)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def down_services(base_env: dict[str, Any]) -> Services:
    """Services whose database is a closed port (and gives up quickly)."""
    dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    settings = OptimizedDashboardSettings.load(env={}, **{**base_env, "database_url": dsn})
    return Services(settings, db=Database(dsn, acquire_timeout=0.3, connect_timeout=1))


async def test_database_down_serves_stale_else_503(
    client_for: Any, base_env: dict[str, Any], database_url: str, make_token: Any
) -> None:
    uid = await f.create_user(database_url)
    token = {"Authorization": f"Bearer {make_token(uid)}"}
    up = client_for(fn)
    warm = await up.get(URL, headers=token)
    assert warm.json()["metadata"]["cache_status"] == "miss"
    await invalidate_dashboard(fn.services, uid)  # the entry is now out of date

    down = client_for(fn, services=down_services(base_env))  # same Redis prefix, no database
    stale = await down.get(URL, headers=token)
    assert stale.status_code == 200
    assert stale.headers["x-cache-status"] == "stale" and stale.json()["metadata"]["cache_status"] == "stale"
    assert stale.json()["data"] == warm.json()["data"]
    posted = await down.post(URL, headers=token, json={})
    assert posted.status_code == 200 and posted.json()["metadata"]["cache_status"] == "stale"

    nobody = {"Authorization": f"Bearer {make_token(str(uuid.uuid4()))}"}  # nothing cached
    for r in (await down.get(URL, headers=nobody), await down.post(URL, headers=nobody, json={"range": "week"})):
        assert r.status_code == 503
        assert r.json()["success"] is False and r.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
        assert r.json()["error"]["request_id"]


async def test_redis_down_still_answers_from_the_database(
    client_for: Any, base_env: dict[str, Any], database_url: str, make_token: Any
) -> None:
    uid = await f.create_user(database_url)
    client = client_for(fn, redis_url=f"redis://127.0.0.1:{closed_port()}/0", redis_timeout_ms=50)
    token = {"Authorization": f"Bearer {make_token(uid)}"}
    for r in (await client.get(URL, headers=token), await client.post(URL, headers=token, json={})):
        assert r.status_code == 200 and r.json()["metadata"]["cache_status"] == "bypass"
