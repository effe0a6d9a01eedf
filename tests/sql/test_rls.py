"""Row level security and the SQL helpers, exercised the way the functions use them:
through `shared.db.Database` (role `authenticated` + JWT claims set locally, or the
service role), against this run's migrated database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg

from shared.context import Principal
from shared.db import Database
from tests import factories as f


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, max_size=4)
    yield database
    await database.close()


@pytest.fixture(scope="module")
async def world(database_url: str) -> dict[str, Any]:
    """A and B with one row of everything; C blocked A; B and C matched."""
    a = await f.create_user(database_url)
    b = await f.create_user(database_url, gender="man", interested_in=["woman"])
    c = await f.create_user(database_url)
    artist = await f.add_artist(database_url, "RLS Test Artist")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for uid in (a, b):
            await f.add_purchase(conn, uid, 10, artist_id=artist)
            await f.set_budget(conn, uid, 100)
            await f.add_goal(conn, uid)
            await f.add_media(conn, uid)
            await f.add_user_event(conn, uid)
            await f.add_subscription(conn, uid)
            await f.follow(conn, uid, artist)
        await f.add_swipe(conn, b, c, "like")
        await f.add_swipe(conn, c, b, "like")
        await f.add_match(conn, b, c)
        await f.block(conn, c, a)
    return {"a": a, "b": b, "c": c, "artist": artist}


def user(uid: str) -> Principal:
    return Principal(user_id=uid, role="authenticated")


OWNED = [
    ("purchases", "user_id"),
    ("budgets", "user_id"),
    ("goals", "user_id"),
    ("media_objects", "owner_id"),
    ("user_events", "user_id"),
    ("subscriptions", "user_id"),
    ("artist_follows", "user_id"),
    ("user_tiers", "user_id"),
    ("swipes", "swiper_id"),
    ("blocks", "blocker_id"),
]


async def count(conn: psycopg.AsyncConnection[Any], query: str, *params: Any) -> int:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_user_sees_only_own_rows(db: Database, world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    async with db.as_user(user(a)) as conn:
        for table, owner in OWNED:
            assert await count(conn, f"select count(*) from public.{table} where {owner} = %s", b) == 0, table
            others = await count(conn, f"select count(*) from public.{table} where {owner} <> %s", a)
            assert others == 0, table
        assert await count(conn, "select count(*) from public.purchases") >= 1
        assert await count(conn, "select count(*) from public.swipes where swiper_id = %s", b) == 0
        # B and C's match is invisible to A; B sees it
        assert await count(conn, "select count(*) from public.matches") == 0
    async with db.as_user(user(b)) as conn:
        assert await count(conn, "select count(*) from public.matches") == 1
        assert await count(conn, "select count(*) from public.purchases where user_id = %s", b) == 1


async def test_user_cannot_write_rows_owned_by_someone_else(db: Database, world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    writes = [
        ("insert into public.purchases (user_id, amount, category) values (%s, 5, 'album')", (b,)),
        ("insert into public.budgets (user_id, monthly_limit) values (%s, 1)", (b,)),
        ("insert into public.goals (user_id, title, target_amount) values (%s, 'x', 1)", (b,)),
        ("insert into public.blocks (blocker_id, blocked_id) values (%s, %s)", (b, a)),
    ]
    for sql, params in writes:
        with pytest.raises(pg.InsufficientPrivilege, match="row-level security"):
            async with db.as_user(user(a)) as conn:
                await conn.execute(sql, params)
    # updates and deletes of B's rows silently touch nothing
    async with db.as_user(user(a)) as conn:
        cur = await conn.execute("update public.purchases set amount = 1 where user_id = %s", (b,))
        assert cur.rowcount == 0
        cur = await conn.execute("delete from public.goals where user_id = %s", (b,))
        assert cur.rowcount == 0
        cur = await conn.execute("update public.profiles set bio = 'pwned' where id = %s", (b,))
        assert cur.rowcount == 0
    # and own rows are writable
    async with db.as_user(user(a)) as conn:
        await conn.execute("insert into public.purchases (user_id, amount, category) values (%s, 5, 'merch')", (a,))
        cur = await conn.execute("update public.profiles set bio = 'hello' where id = %s", (a,))
        assert cur.rowcount == 1


@pytest.mark.parametrize(
    "sql",
    [
        # media rows are written by upload-media as the service, after it checked the object
        "insert into public.media_objects (owner_id, bucket, object_key, status) "
        "values (%s, 'avatars', 'avatars/' || %s || '/x.png', 'stored')",
        "update public.media_objects set status = 'stored' where owner_id = %s",
        "delete from public.media_objects where owner_id = %s",
        # server-owned profile columns
        "update public.profiles set score = 1e6 where id = %s",
        "update public.profiles set hidden = false, deleted_at = null where id = %s",
        "update public.profiles set last_active_at = now() where id = %s",
        "insert into public.user_tiers (user_id, tier) values (%s, 'admin') "
        "on conflict (user_id) do update set tier = 'admin'",
        "insert into public.subscriptions (user_id, provider, provider_ref, status) "
        "values (%s, 'paystack', 'SUB_self', 'active')",
        "insert into public.user_events (user_id, event_type) values (%s, 'x')",
        "select count(*) from public.webhook_deliveries where user_id = %s",
        "select count(*) from public.outbox where actor_id = %s",
    ],
)
async def test_service_only_tables_refuse_users(db: Database, world: dict[str, Any], sql: str) -> None:
    with pytest.raises(pg.InsufficientPrivilege):
        async with db.as_user(user(world["a"])) as conn:
            await conn.execute(sql, (world["a"],) * sql.count("%s"))


async def test_service_role_reads_and_writes_everything(db: Database, world: dict[str, Any]) -> None:
    b = world["b"]
    everyone = [world["a"], b, world["c"]]
    async with db.as_service() as conn:
        for table, owner in OWNED:
            query = f"select count(*) from public.{table} where {owner} = any(%s::uuid[])"
            assert await count(conn, query, everyone) >= 1, table
        await conn.execute("insert into public.purchases (user_id, amount, category) values (%s, 7, 'concert')", (b,))
        await conn.execute("update public.user_tiers set tier = 'paid', source = 'test' where user_id = %s", (b,))
        await conn.execute(
            "insert into public.webhook_deliveries (provider, dedupe_key, body) values ('paystack', %s, %s)",
            (str(uuid.uuid4()), b'{"raw": true}'),
        )
        assert await count(conn, "select count(*) from public.matches where %s in (user_a, user_b)", b) == 1


async def test_profiles_are_private_to_their_owner(db: Database, database_url: str) -> None:
    """A profile row holds birthdate, exact coordinates and budget: only its owner reads it.
    Others are seen through public.deck(), card columns only (tests/functions/recommendations)."""
    me = await f.create_user(database_url)
    visible = await f.create_user(database_url)
    hidden = await f.create_user(database_url, hidden=True)
    gone = await f.create_user(database_url, deleted_at="2024-01-01T00:00:00Z")
    async with db.as_user(user(me)) as conn:
        cur = await conn.execute("select id::text from public.profiles where id = any(%s)", ([me, visible, hidden, gone],))
        assert [r[0] for r in await cur.fetchall()] == [me]
        assert await count(conn, "select count(*) from public.profiles") == 1
    async with db.as_user(user(hidden)) as conn:  # your own profile, always, hidden or not
        assert await count(conn, "select count(*) from public.profiles where id = %s", hidden) == 1


async def test_swipes_and_matches_are_written_only_through_apply_swipes(db: Database, database_url: str) -> None:
    """Likes spend a quota the batch-swipe function takes first, so users write no swipe,
    match, idempotency record or outbox event themselves (the REST API would let them)."""
    x = await f.create_user(database_url)
    y = await f.create_user(database_url, gender="man")
    lo, hi = sorted([x, y], key=uuid.UUID)
    await f.add_swipe(database_url, y, x, "like")
    refused = [
        ("insert into public.swipes (swiper_id, target_id, action) values (%s, %s, 'like')", (x, y)),
        ("update public.swipes set action = 'like' where swiper_id = %s", (x,)),
        ("insert into public.matches (user_a, user_b) values (%s, %s)", (lo, hi)),
        ("insert into public.swipe_requests (user_id, idempotency_key, request_hash, response) "
         "values (%s, 'k', '', '{}')", (x,)),
        ("select public.apply_swipes(%s::uuid[], array['like'], 50)", ([y],)),
        ("select public.enqueue_event('match.created', '{}', %s::uuid[])", ([x, y],)),
    ]
    for sql, params in refused:
        with pytest.raises(pg.InsufficientPrivilege, match="permission denied"):
            async with db.as_user(user(x)) as conn:
                await conn.execute(sql, params)
    # the service, acting for the verified user: auth.uid() is x, the match is made once
    async with db.transaction(principal=user(x), service=True) as conn:
        cur = await conn.execute("select public.apply_swipes(%s::uuid[], array['like'], 1)", ([y],))
        row = await cur.fetchone()
        assert row is not None and [m["user_id"] for m in row[0]["response"]["matches"]] == [y]
    async with db.as_user(user(x)) as conn:  # and x reads their own swipe and the match
        assert await count(conn, "select count(*) from public.swipes where target_id = %s", y) == 1
        assert await count(conn, "select count(*) from public.matches where user_b = %s or user_a = %s", y, y) == 1


async def test_anon_reads_reference_data_only(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("set local role anon")
        assert await count(conn, "select count(*) from public.subscription_plans") == 2
        await count(conn, "select count(*) from public.artists")
        with pytest.raises(pg.InsufficientPrivilege):
            await conn.execute("select * from public.profiles")


async def test_blocked_either_way_is_the_services(db: Database, world: dict[str, Any]) -> None:
    """Who blocked you is the blocker's secret: users see their own blocks only, and the
    definer helper that sees both directions is the service's (apply_swipes, deck)."""
    a, c = world["a"], world["c"]
    async with db.as_user(user(a)) as conn:
        assert await count(conn, "select count(*) from public.blocks") == 0  # C's block is C's row
    for asked in (a, c):
        with pytest.raises(pg.InsufficientPrivilege, match="permission denied for function"):
            async with db.as_user(user(a)) as conn:
                await conn.execute("select public.blocked_either_way(%s)", (asked,))
    async with db.as_service() as conn:
        cur = await conn.execute("select public.blocked_either_way(%s)::text", (a,))
        assert [r[0] for r in await cur.fetchall()] == [c]
    async with db.transaction(principal=user(c), service=True) as conn:  # the service for a user
        cur = await conn.execute("select id::text from public.blocked_either_way(%s) as id", (c,))
        assert [r[0] for r in await cur.fetchall()] == [a]


async def test_enqueue_event_from_a_service_transaction_for_a_user(
    db: Database, world: dict[str, Any], database_url: str
) -> None:
    a, b = world["a"], world["b"]
    async with db.transaction(principal=user(a), service=True) as conn:
        cur = await conn.execute(
            "select public.enqueue_event('match.created', %s::jsonb, %s::uuid[])", ('{"with": "b"}', [a, b])
        )
        row = await cur.fetchone()
        assert row is not None
        event_id = row[0]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "select event_type, payload, recipients::text[], actor_id::text, processed_at from public.outbox "
            "where event_id = %s",
            (event_id,),
        )
        assert await cur.fetchone() == ("match.created", {"with": "b"}, [a, b], a, None)
    # rolled back with the transaction that wrote it
    with pytest.raises(RuntimeError):
        async with db.transaction(principal=user(a), service=True) as conn:
            await conn.execute("select public.enqueue_event('never', '{}', '{}')")
            raise RuntimeError("abort")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        assert await count(conn, "select count(*) from public.outbox where event_type = 'never'") == 0


async def test_swipe_and_match_constraints(db: Database, database_url: str) -> None:
    x = await f.create_user(database_url)
    y = await f.create_user(database_url, gender="man")
    lo, hi = sorted([x, y], key=uuid.UUID)
    with pytest.raises(pg.CheckViolation):
        await f.add_swipe(database_url, x, x)
    with pytest.raises(pg.CheckViolation):
        await f.add_swipe(database_url, x, y, "superduperlike")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        with pytest.raises(pg.CheckViolation):  # canonical order: user_a < user_b
            await conn.execute("insert into public.matches (user_a, user_b) values (%s, %s)", (hi, lo))
        with pytest.raises(pg.CheckViolation):
            await conn.execute("insert into public.matches (user_a, user_b) values (%s, %s)", (x, x))
    with pytest.raises(pg.CheckViolation):
        await f.block(database_url, x, x)

    # the helpers are the service's; acting for a user, they answer about that user only
    insert_match = "insert into public.matches (user_a, user_b) values (%s, %s)"
    await f.add_swipe(database_url, x, y, "like")
    for sql, params in (("select public.mutual_likes(%s, %s)", (x, [y])), ("select public.is_mutual_like(%s, %s)", (x, y))):
        with pytest.raises(pg.InsufficientPrivilege, match="permission denied for function"):
            async with db.as_user(user(x)) as conn:
                await conn.execute(sql, params)
    async with db.transaction(principal=user(x), service=True) as conn:
        cur = await conn.execute("select public.mutual_likes(%s, %s)", (x, [y]))
        assert await cur.fetchall() == []
        cur = await conn.execute("select public.is_mutual_like(%s, %s)", (x, y))
        assert await cur.fetchone() == (False,)
    await f.add_swipe(database_url, y, x, "superlike")
    async with db.transaction(principal=user(y), service=True) as conn:
        cur = await conn.execute("select public.mutual_likes(%s, %s)::text", (y, [x, str(uuid.uuid4())]))
        assert [r[0] for r in await cur.fetchall()] == [x]
        cur = await conn.execute("select public.is_mutual_like(%s, %s)", (x, y))
        assert await cur.fetchone() == (True,)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(insert_match, (lo, hi))
        with pytest.raises(pg.UniqueViolation):  # exactly one match per pair
            await conn.execute(insert_match, (lo, hi))


async def test_embeddings_and_ranking_helpers(db: Database, database_url: str) -> None:
    me = await f.create_user(database_url, embedding=[1.0] + [0.0] * 63)
    near = await f.create_user(database_url, embedding=[0.9, 0.1] + [0.0] * 62)
    # refused by the check, or first by the vector(64) cast where pgvector is installed
    with pytest.raises((pg.CheckViolation, pg.DataException)):
        await f.set_embedding(database_url, me, [1.0] * 63)
    async with db.as_user(user(me)) as conn:  # one's own embedding, nobody else's
        cur = await conn.execute("select user_id::text from public.profile_embeddings where user_id = any(%s)", ([me, near],))
        assert [r[0] for r in await cur.fetchall()] == [me]
        assert await count(conn, "select count(*) from public.profile_embeddings") == 1
        with pytest.raises(pg.InsufficientPrivilege):
            await conn.execute("update public.profile_embeddings set model = 'x' where user_id = %s", (me,))
    for helper in ("select public.cosine_similarity('{1}', '{1}')", "select public.has_pgvector()"):
        with pytest.raises(pg.InsufficientPrivilege, match="permission denied for function"):
            async with db.as_user(user(me)) as conn:
                await conn.execute(helper)
    async with db.as_service() as conn:
        cur = await conn.execute(
            "select public.cosine_similarity(mine.embedding, theirs.embedding), public.has_pgvector() "
            "from public.profile_embeddings mine, public.profile_embeddings theirs "
            "where mine.user_id = %s and theirs.user_id = %s",
            (me, near),
        )
        row = await cur.fetchone()
        assert row is not None and row[0] == pytest.approx(0.9 / (0.82**0.5), rel=1e-6)
        assert isinstance(row[1], bool)


async def test_geo_helpers(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "select public.geo_distance_m(37.5665, 126.9780, 37.4563, 126.7052),"  # Seoul - Incheon
            " public.geo_within(37.4563, 126.7052, 37.5665, 126.9780, 30000),"
            " public.geo_within(35.1796, 129.0756, 37.5665, 126.9780, 30000)"  # Busan
        )
        row = await cur.fetchone()
        assert row is not None
        assert 26_000 < row[0] < 28_000
        assert row[1:] == (True, False)
