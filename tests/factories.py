"""Small async helpers that put rows in the database for a test, as the superuser (RLS
does not apply). Each takes an open `psycopg.AsyncConnection` or a DSN, and returns the
new row's id where it has one.

    uid = await create_user(database_url, gender="man", interested_in=["woman"])
    other = await create_user(database_url, tier="paid")
    await add_purchase(database_url, uid, 25, category="album")
    await add_swipe(database_url, uid, other, "like")

Ids are random uuid4s, so tests sharing the run's database never collide. A user gets a
profile that shows up in decks unless told otherwise (see PROFILE_DEFAULTS).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.AsyncConnection[Any] | str

#: a visible adult in Seoul looking for men: override any of these per call
PROFILE_DEFAULTS: dict[str, Any] = {
    "gender": "woman",
    "birthdate": date(1996, 5, 17),
    "interested_in": ["man"],
    "lat": 37.5665,
    "lon": 126.9780,
    "score": 0.5,
}


@contextmanager
def scratch_database(admin_dsn: str, prefix: str = "edgefn_scratch") -> Iterator[str]:
    """A new empty database (its DSN), dropped on exit."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        yield make_conninfo(**{**conninfo_to_dict(admin_dsn), "dbname": name})
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@asynccontextmanager
async def connection(conn: Conn) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The given connection, or a new autocommit one for a DSN (closed afterwards)."""
    if isinstance(conn, str):
        async with await psycopg.AsyncConnection.connect(conn, autocommit=True) as c:
            yield c
    else:
        yield conn


async def _insert(conn: Conn, table: str, row: dict[str, Any], returning: str | None = None) -> Any:
    from psycopg import sql

    query = sql.SQL("insert into {} ({}) values ({})").format(
        sql.SQL(table),  # a literal table name from this module, never user input
        sql.SQL(", ").join(sql.Identifier(k) for k in row),
        sql.SQL(", ").join(sql.Placeholder() for _ in row),
    )
    if returning:
        query = query + sql.SQL(" returning {}").format(sql.Identifier(returning))
    values = [Jsonb(v) if isinstance(v, dict) else v for v in row.values()]
    async with connection(conn) as c:
        cur = await c.execute(query, values)
        if returning:
            found = await cur.fetchone()
            return found[0] if found else None
    return None


async def create_user(
    conn: Conn,
    *,
    user_id: str | uuid.UUID | None = None,
    email: str | None = None,
    tier: str = "free",
    embedding: Sequence[float] | None = None,
    **profile_fields: Any,
) -> str:
    """auth.users + profiles (PROFILE_DEFAULTS overridden by `profile_fields`) + user_tiers
    (+ profile_embeddings when `embedding` is given). Returns the user id as text."""
    uid = str(user_id or uuid.uuid4())
    fields = {**PROFILE_DEFAULTS, "display_name": f"user {uid[:8]}", **profile_fields}
    if isinstance(fields.get("photos"), list):
        fields["photos"] = Jsonb(fields["photos"])
    async with connection(conn) as c:
        await _insert(
            c,
            "auth.users",
            {"id": uid, "email": email or f"{uid}@example.com", "raw_app_meta_data": {"tier": tier}},
        )
        await _insert(c, "public.profiles", {"id": uid, **fields})
        await _insert(c, "public.user_tiers", {"user_id": uid, "tier": tier, "source": "test"})
        if embedding is not None:
            await set_embedding(c, uid, embedding)
    return uid


async def set_tier(conn: Conn, user_id: str, tier: str) -> None:
    async with connection(conn) as c:
        await c.execute(
            "insert into public.user_tiers (user_id, tier, source) values (%s, %s, 'test') "
            "on conflict (user_id) do update set tier = excluded.tier, source = excluded.source",
            (user_id, tier),
        )


async def set_embedding(conn: Conn, user_id: str, embedding: Sequence[float]) -> None:
    async with connection(conn) as c:
        await c.execute(
            "insert into public.profile_embeddings (user_id, embedding) values (%s, %s::real[]) "
            "on conflict (user_id) do update set embedding = excluded.embedding, updated_at = now()",
            (user_id, [float(x) for x in embedding]),
        )


async def add_artist(conn: Conn, name: str | None = None, group_name: str | None = None) -> str:
    name = name or f"Artist {uuid.uuid4().hex[:6]}"
    return str(await _insert(conn, "public.artists", {"name": name, "group_name": group_name}, "id"))


async def follow(conn: Conn, user_id: str, artist_id: str) -> None:
    await _insert(conn, "public.artist_follows", {"user_id": user_id, "artist_id": artist_id})


async def add_purchase(
    conn: Conn,
    user_id: str,
    amount: float | Decimal | str = "19.99",
    *,
    artist_id: str | None = None,
    category: str = "album",
    currency: str = "USD",
    purchased_at: datetime | None = None,
    description: str | None = None,
) -> str:
    row: dict[str, Any] = {
        "user_id": user_id,
        "artist_id": artist_id,
        "amount": Decimal(str(amount)),
        "currency": currency,
        "category": category,
        "description": description,
    }
    if purchased_at is not None:
        row["purchased_at"] = purchased_at
    return str(await _insert(conn, "public.purchases", row, "id"))


async def set_budget(conn: Conn, user_id: str, monthly_limit: float | Decimal | str, currency: str = "USD") -> None:
    async with connection(conn) as c:
        await c.execute(
            "insert into public.budgets (user_id, monthly_limit, currency) values (%s, %s, %s) "
            "on conflict (user_id) do update set monthly_limit = excluded.monthly_limit, currency = excluded.currency",
            (user_id, Decimal(str(monthly_limit)), currency),
        )


async def add_goal(
    conn: Conn, user_id: str, title: str = "Concert trip", target_amount: float | Decimal | str = 500, **fields: Any
) -> str:
    row = {"user_id": user_id, "title": title, "target_amount": Decimal(str(target_amount)), **fields}
    return str(await _insert(conn, "public.goals", row, "id"))


async def add_swipe(
    conn: Conn, swiper_id: str, target_id: str, action: str = "like", created_at: datetime | None = None
) -> None:
    row: dict[str, Any] = {"swiper_id": swiper_id, "target_id": target_id, "action": action}
    if created_at is not None:
        row["created_at"] = created_at
    await _insert(conn, "public.swipes", row)


async def add_match(conn: Conn, user_1: str, user_2: str) -> str:
    """A match row in canonical order (the caller need not sort the pair)."""
    a, b = sorted((uuid.UUID(str(user_1)), uuid.UUID(str(user_2))))
    return str(await _insert(conn, "public.matches", {"user_a": a, "user_b": b}, "id"))


async def block(conn: Conn, blocker_id: str, blocked_id: str) -> None:
    await _insert(conn, "public.blocks", {"blocker_id": blocker_id, "blocked_id": blocked_id})


async def add_media(
    conn: Conn,
    owner_id: str,
    *,
    bucket: str = "avatars",
    object_key: str | None = None,
    content_type: str = "image/png",
    size_bytes: int = 1024,
    status: str = "stored",
) -> str:
    row = {
        "owner_id": owner_id,
        "bucket": bucket,
        "object_key": object_key or f"{bucket}/{owner_id}/{uuid.uuid4().hex}.png",
        "content_type": content_type,
        "size_bytes": size_bytes,
        "status": status,
    }
    return str(await _insert(conn, "public.media_objects", row, "id"))


async def add_subscription(
    conn: Conn,
    user_id: str,
    *,
    provider: str = "paystack",
    provider_ref: str | None = None,
    plan_code: str | None = "pro_monthly",
    tier: str = "paid",
    status: str = "active",
    current_period_end: datetime | None = None,
) -> str:
    row = {
        "user_id": user_id,
        "provider": provider,
        "provider_ref": provider_ref or f"SUB_{uuid.uuid4().hex[:12]}",
        "plan_code": plan_code,
        "tier": tier,
        "status": status,
        "current_period_end": current_period_end,
    }
    return str(await _insert(conn, "public.subscriptions", row, "id"))


async def add_user_event(conn: Conn, user_id: str, event_type: str = "match", payload: dict[str, Any] | None = None) -> int:
    row = {"user_id": user_id, "event_type": event_type, "payload": payload or {}}
    return int(await _insert(conn, "public.user_events", row, "id"))


async def age_cell_moves(conn: Conn, *user_ids: str, minutes: float = 16) -> None:
    """As if the users' last location-cell move (0017b) were `minutes` ago: the next
    location write may move their published cell again."""
    async with connection(conn) as c:
        await c.execute(
            "update public.profile_cell_moves set moved_at = now() - make_interval(mins => %s) where user_id = any(%s)",
            (minutes, list(user_ids)),
        )
