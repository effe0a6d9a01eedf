"""recommendations: A filtered, ranked, cached deck of candidates.

    GET /functions/v1/recommendations?limit=20&gender=&min_age=&max_age=&max_distance_km=&cursor=

The ASGI app (`app`) and the Lambda entry point (`handler`). The work is in `logic.py` and
`public.deck` (sql/migrations/0011_swipes_and_deck.sql)."""

from __future__ import annotations

from typing import Any

from functions.recommendations import logic
from functions.recommendations.models import Deck, DeckQuery
from functions.recommendations.settings import RecommendationsSettings
from shared.app import FunctionApp
from shared.context import RequestContext
from shared.health import add_health_route

fn = FunctionApp("recommendations", settings=RecommendationsSettings, description="A filtered, ranked, cached deck of candidates")
add_health_route(fn, ("database", "redis"))


@fn.get(
    "/", auth="required", query=DeckQuery, response=Deck, cache=logic.CACHE,
    summary="The caller's next candidates, best first (cached 5 minutes per user and filters; "
    "any swipe invalidates it); page on with next_cursor",
)
async def recommendations(ctx: RequestContext) -> Any:
    return await logic.load(ctx, ctx.query)


app = fn
handler = fn.lambda_handler
