"""`GET <function>/health`: liveness without I/O, open to anyone; `?deep=1` also checks the
function's dependencies, each under its own deadline, and answers 503 when one is down (in
the error envelope like every refusal, code DEPENDENCY_UNAVAILABLE, the checks in its
details). A deep check costs a database query, a Redis ping and maybe an R2 call, so it
needs `Authorization: Bearer <HEALTH_SECRET | the service role key | a service_role JWT>`
(401 otherwise, before any check runs)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.app import FunctionApp
from shared.auth import require_service
from shared.context import RequestContext
from shared.envelope import JSONResponse, error_body


async def _check(name: str, ctx: RequestContext) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(1.0):
            if name == "database":
                await ctx.services.db.fetch("select 1 as ok", service=True)
            elif name == "redis":
                await ctx.services.kv.ping()
            elif name == "storage":
                storage = ctx.services.storage
                # in the thread: the first call may build the client (boto3: ~250 ms)
                await asyncio.to_thread(lambda: storage.client.head_bucket(Bucket=storage.bucket))
        status = "up"
    except (Exception, TimeoutError) as exc:  # a health check reports, it never raises
        status = f"down: {getattr(exc, 'code', type(exc).__name__)}"
    return {"status": status, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


class HealthQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deep: bool = False


def add_health_route(fn: FunctionApp, dependencies: tuple[str, ...] = ("database", "redis")) -> None:
    fn.dependencies = dependencies  # what init connects to (`FunctionApp.start`, `FunctionApp.warm`)

    @fn.get("/health", auth="public", query=HealthQuery, summary="Liveness; ?deep=1 (service secret) checks dependencies", tags=("health",))
    async def health(ctx: RequestContext) -> Any:
        body: dict[str, Any] = {"status": "ok", "function": fn.name}
        if ctx.query.deep:
            settings = ctx.settings
            await require_service(
                ctx, (getattr(settings, "health_secret", None), getattr(settings, "supabase_service_role_key", None)),
                "a deep health check",
            )
            names = list(dependencies)
            results = await asyncio.gather(*(_check(n, ctx) for n in names))
            body["services"] = dict(zip(names, results))
            down = [n for n, r in body["services"].items() if r["status"] != "up"]
            if down:
                body["status"] = "degraded"
                message = f"{', '.join(down)} unavailable"
                return JSONResponse(error_body("DEPENDENCY_UNAVAILABLE", message, ctx.request_id, body), status_code=503)
        return body

