"""The dashboard as the seed app built it, for the system benchmark's baseline: a bare
Starlette route that verifies the token with a network call to the auth server
(`AUTH_URL/auth/v1/user`, as `supabase.auth.getUser()` does), reads the tier with a second
query, looks in a database-table cache, and on a miss runs the queries one after another
(service role, filtering on the user id), aggregates in Python with floats and writes the
cache row. No rate limit, no edge cache, no RLS: what a user would otherwise deploy.

    DATABASE_URL=... AUTH_URL=http://127.0.0.1:9999 uvicorn bench.apps.naive_dashboard:app
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.apps.dashboard_seed import _start

CACHE_TTL = timedelta(minutes=5)
_pool: AsyncConnectionPool | None = None
_http: httpx.AsyncClient | None = None

BASIC = """
select (select count(*) from public.artist_follows where user_id = %(u)s) as artist_count,
       (select count(*) from public.goals where user_id = %(u)s and status = 'active') as active_goals,
       (select coalesce(sum(amount), 0) from public.purchases
         where user_id = %(u)s and purchased_at >= date_trunc('month', now())) as monthly_spent
"""
RECENT = """
select p.id::text, p.amount::float8 as amount, p.category, coalesce(a.name, 'Unknown') as artist_name,
       p.purchased_at::text
from public.purchases p left join public.artists a on a.id = p.artist_id
where p.user_id = %(u)s order by p.purchased_at desc limit 10
"""
IN_RANGE = """
select p.amount::float8 as amount, p.artist_id::text, a.name as artist_name
from public.purchases p left join public.artists a on a.id = p.artist_id
where p.user_id = %(u)s and p.purchased_at >= %(start)s
"""
ANALYTICS = """
select category, sum(amount)::float8 as total, count(*) as n from public.purchases
where user_id = %(u)s and purchased_at >= %(start)s group by category
"""


async def _startup() -> None:
    global _pool, _http
    _pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=1, max_size=10, open=False,
                                kwargs={"autocommit": True, "row_factory": dict_row})
    await _pool.open()
    _http = httpx.AsyncClient(timeout=5.0)
    async with _pool.connection() as conn:
        await conn.execute(
            "create table if not exists public.bench_naive_cache (user_id uuid, range text, payload jsonb, "
            "expires_at timestamptz, primary key (user_id, range))"
        )


async def _shutdown() -> None:
    if _pool is not None:
        await _pool.close()
    if _http is not None:
        await _http.aclose()


async def dashboard(request: Request) -> JSONResponse:
    assert _pool is not None and _http is not None
    auth = request.headers.get("authorization", "")
    who = await _http.get(os.environ["AUTH_URL"] + "/auth/v1/user", headers={"Authorization": auth})
    if who.status_code != 200:
        return JSONResponse({"error": "Unauthorized"}, status_code=401)
    user = who.json()["id"]
    range_ = request.query_params.get("range", "month")
    async with _pool.connection() as conn:
        tier = await (await conn.execute("select tier from public.user_tiers where user_id = %s", (user,))).fetchone()
        cached = await (await conn.execute(
            "select payload from public.bench_naive_cache where user_id = %s and range = %s and expires_at > now()",
            (user, range_))).fetchone()
        if cached is not None:
            return JSONResponse({"success": True, "data": cached["payload"], "cached": True})
        now = datetime.now(UTC)
        args = {"u": user, "start": _start(range_, now)}
        basic = await (await conn.execute(BASIC, args)).fetchone()
        recent = await (await conn.execute(RECENT, args)).fetchall()
        rows = await (await conn.execute(IN_RANGE, args)).fetchall()
        assert basic is not None
        by_artist: dict[str, dict[str, Any]] = {}
        total = 0.0
        for r in rows:
            name = r["artist_name"] or "Unknown"
            a = by_artist.setdefault(name, {"artist_id": r["artist_id"], "total_spent": 0.0, "purchase_count": 0})
            a["total_spent"] += r["amount"]
            a["purchase_count"] += 1
            total += r["amount"]
        data: dict[str, Any] = {
            "user_stats": {"total_spent": total, "purchases_count": len(rows), "active_goals": basic["active_goals"],
                           "artist_count": basic["artist_count"], "monthly_spent": float(basic["monthly_spent"])},
            "recent_purchases": recent,
            "artist_breakdown": sorted(by_artist.values(), key=lambda a: -a["total_spent"]),
        }
        if tier is not None and tier["tier"] in ("paid", "admin"):
            data["analytics"] = await (await conn.execute(ANALYTICS, args)).fetchall()
        await conn.execute(
            "insert into public.bench_naive_cache values (%s, %s, %s, %s) on conflict (user_id, range) "
            "do update set payload = excluded.payload, expires_at = excluded.expires_at",
            (user, range_, json.dumps(data), now + CACHE_TTL))
    return JSONResponse({"success": True, "data": data, "cached": False})


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    await _startup()
    yield
    await _shutdown()


app = Starlette(routes=[Route("/functions/v1/optimized-dashboard", dashboard)], lifespan=_lifespan)
