"""The dashboard benchmark's server, configured from the environment like a deployed function:

- /bare: a Starlette route, no middleware at all (the floor);
- /functions/v1/optimized-dashboard: the function as deployed;
- /functions/v1/dashboard-seed: the seed app's approach (bench/apps/dashboard_seed.py);
- /stats: the Redis and Postgres round-trip counters of both.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.apps import dashboard_seed
from functions.optimized_dashboard.handler import fn


async def bare(request: Request) -> JSONResponse:
    return JSONResponse({"success": True, "data": {"ok": True}})


async def stats(request: Request) -> JSONResponse:
    out = {}
    for name, app in (("dashboard", fn), ("seed", dashboard_seed.fn)):
        s = app.services
        out[name] = {"kv": s._kv.round_trips if s._kv else 0, "db": s._db.round_trips if s._db else 0}
    return JSONResponse(out)


plain = Starlette(routes=[Route("/bare", bare), Route("/stats", stats)])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope.get("path", "")
    if scope["type"] == "http" and path.startswith("/functions/v1/optimized-dashboard"):
        await fn(scope, receive, send)
    elif scope["type"] == "http" and path.startswith("/functions/v1/dashboard-seed"):
        await dashboard_seed.fn(scope, receive, send)
    else:
        await plain(scope, receive, send)
