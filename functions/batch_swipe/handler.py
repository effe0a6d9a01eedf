"""batch-swipe: Many swipes in one request; matches exactly once.

    POST /functions/v1/batch-swipe  {"swipes": [{"target_id": "...", "action": "like"}], "idempotency_key": "..."}

The ASGI app (`app`) and the Lambda entry point (`handler`). The work is in `logic.py` and
`public.apply_swipes` (sql/migrations/0011_swipes_and_deck.sql)."""

from __future__ import annotations

from typing import Any

from functions.batch_swipe import logic
from functions.batch_swipe.models import BatchSwipeBody, BatchSwipeResult
from functions.batch_swipe.settings import BatchSwipeSettings
from shared.app import FunctionApp
from shared.context import RequestContext
from shared.health import add_health_route

fn = FunctionApp("batch-swipe", settings=BatchSwipeSettings, description="Many swipes in one request; matches exactly once")
add_health_route(fn, ("database", "redis"))


@fn.post(
    "/", auth="required", body=BatchSwipeBody, response=BatchSwipeResult, redis_failure="closed",
    summary="Apply 1 to 50 swipes in one transaction: a result per swipe, likes counted against the daily quota, "
    "mutual likes become exactly one match",
)
async def batch_swipe(ctx: RequestContext) -> Any:
    return await logic.apply_batch(ctx)


@fn.scheduled
async def prune_idempotency_records(services: Any) -> dict[str, Any]:
    """EventBridge schedule: drop stored responses of idempotency keys past retention."""
    return await logic.prune_requests(services)


app = fn
handler = fn.lambda_handler
