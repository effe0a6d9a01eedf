"""The middleware benchmark's server: three routes on one process, configured from the
environment like a deployed function.

- /bare: a Starlette route, no middleware at all (the floor);
- /redis: a Starlette route that does one Redis GET with redis-py (one round trip);
- /functions/v1/bench/cached: the full shared stack (request id, log line, CORS, auth,
  rate limit, edge cache) on a cached authenticated route that reads Postgres on a miss.
- /stats: the process's Redis and Postgres round-trip counters.
"""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio as redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.app import FunctionApp
from shared.cache import CachePolicy
from shared.context import RequestContext
from shared.ratelimit import RateRule
from shared.settings import CoreSettings

fn = FunctionApp("bench", settings=CoreSettings)
UNLIMITED = RateRule(name="bench", limits={t: 10**9 for t in ("anonymous", "free", "paid", "admin")})


@fn.get("/cached", auth="required", rate=UNLIMITED, cache=CachePolicy(ttl=300, version=lambda ctx: f"bench:{ctx.user_id}"))
async def cached(ctx: RequestContext) -> Any:
    row = await ctx.services.db.fetchrow(
        "select auth.uid()::text as user_id, count(*) as purchases from public.purchases where user_id = auth.uid()",
        principal=ctx.principal,
        read_only=True,
    )
    return row


_redis = redis.Redis.from_url(os.environ["REDIS_URL"], protocol=2)


async def bare(request: Request) -> JSONResponse:
    return JSONResponse({"success": True, "data": {"ok": True}})


async def one_get(request: Request) -> JSONResponse:
    value = await _redis.get("bench:value")
    return JSONResponse({"success": True, "data": {"value": value.decode() if value else None}})


async def stats(request: Request) -> JSONResponse:
    s = fn.services
    return JSONResponse({"kv": s.kv.round_trips, "db": s.db.round_trips})


plain = Starlette(routes=[Route("/bare", bare), Route("/redis", one_get), Route("/stats", stats)])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"].startswith("/functions/v1/bench"):
        await fn(scope, receive, send)
    else:
        await plain(scope, receive, send)
