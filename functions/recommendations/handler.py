"""recommendations: A filtered, ranked, cached deck of candidates.

    GET /functions/v1/recommendations?limit=20&gender=&min_age=&max_age=&max_distance_km=&cursor=

The ASGI app (`app`) and the Lambda entry point (`handler`). The work is in `logic.py` and
`public.deck` (sql/migrations/0011_swipes_and_deck.sql, 0017b_location_cells.sql)."""

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
    "/", auth="required", query=DeckQuery, response=Deck,
    summary="The caller's next candidates, best first; page on with next_cursor. A page's ranking is "
    "cached 5 minutes per user and filters (a swipe invalidates it), and re-checked on every read",
)
async def recommendations(ctx: RequestContext) -> Any:
    return await logic.load(ctx, ctx.query)


app = fn
handler = fn.lambda_handler
