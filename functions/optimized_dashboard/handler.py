"""optimized-dashboard: A user's spending dashboard, fast and cached.

    GET  /functions/v1/optimized-dashboard?range=week|month|quarter|year
    POST /functions/v1/optimized-dashboard   {"range": "month"}    (existing clients)

The ASGI app (`app`) and the Lambda entry point (`handler`). See README.md beside this file."""

from __future__ import annotations

from typing import Any

from functions.optimized_dashboard import logic
from functions.optimized_dashboard.models import Dashboard, DashboardBody, DashboardQuery
from functions.optimized_dashboard.settings import OptimizedDashboardSettings
from shared.app import FunctionApp
from shared.context import RequestContext
from shared.health import add_health_route

fn = FunctionApp("optimized-dashboard", settings=OptimizedDashboardSettings, description="A user's spending dashboard, fast and cached")
add_health_route(fn, ("database", "redis"))


@fn.get(
    "/", auth="required", query=DashboardQuery, response=Dashboard, cache=logic.CACHE,
    summary="The caller's spending dashboard for a range (cached per user and range; ETag / 304)",
)
async def dashboard(ctx: RequestContext) -> Any:
    return await logic.load(ctx, ctx.query)


@fn.post(
    "/", auth="required", body=DashboardBody, response=Dashboard,
    summary="The same dashboard, parameters in a JSON body (existing clients); shares the GET cache",
)
async def dashboard_post(ctx: RequestContext) -> Any:
    return await logic.load_cached(ctx, ctx.body.as_query(), get_route=f"{fn.name}.{dashboard.__name__}")


app = fn
handler = fn.lambda_handler
