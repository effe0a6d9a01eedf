"""The deck: one Postgres round trip per request (`public.deck`, migrations 0011 and
0017b), called as the service for the verified caller (users may not execute it over the
REST API: this route's rate limit is its only door).

Pages are cached (`pages`): a hit re-checks the cached cards in the database instead of
ranking the whole candidate set again, so nobody ineligible is ever served from the cache.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from functions.recommendations import pages
from functions.recommendations.cursor import Cursor, decode, filters_digest
from shared import errors

if TYPE_CHECKING:
    from functions.recommendations.models import DeckQuery
    from functions.recommendations.settings import RecommendationsSettings
    from shared.context import RequestContext

DECK_SQL = (
    "select id, display_name, age, distance_km, bio, photos, rank, tier, strategy, digest"
    " from public.deck(%s, %s::text[], %s, %s, %s, %s, %s, %s, %s, %s, %s::float8[], %s, %s, %s, %s, %s::uuid[], %s)"
)
CARD_FIELDS = ("id", "display_name", "age", "distance_km", "bio", "photos")


def caller(ctx: RequestContext) -> str:
    return ctx.end_user("a deck is")


async def load(ctx: RequestContext, query: DeckQuery) -> dict[str, Any]:
    user_id = caller(ctx)
    settings: RecommendationsSettings = ctx.settings  # type: ignore[assignment]
    digest = filters_digest(query.filters())
    # the function's clock (as the dashboard's): the deck counts ages on this day
    now = datetime.fromtimestamp(int(ctx.services.clock()), UTC)
    if query.cursor is not None:
        after = decode(query.cursor, digest, now)
    else:
        after = Cursor(settings.deck_strategy, 0, None, None, now, digest)
    version_key, page_key = pages.keys(ctx.services, user_id, query.model_dump(mode="json"))
    version, cached = await pages.read(ctx.services, version_key, page_key)
    params = (
        query.limit + 1,  # one more than asked: tells whether there is a next page
        [query.gender] if query.gender else None,
        query.min_age,
        query.max_age,
        query.max_distance_km,
        after.strategy,
        after.tier if query.cursor is not None else None,
        after.rank,
        after.id,
        after.as_of,
        [settings.deck_weight_similarity, settings.deck_weight_score, settings.deck_weight_recency],
        settings.deck_recency_days,
        settings.deck_hnsw_pool,
        settings.deck_exact_max,
        settings.deck_exact_radius_km,
        cached.ids if cached else None,
        cached.digest if cached else None,
    )
    try:
        rows = await ctx.services.db.fetch(
            DECK_SQL, params, principal=ctx.principal, service=True, read_only=settings.deck_use_read_replica
        )
    except Exception as exc:
        mapped = _map_db_error(exc)
        if mapped is not None:
            raise mapped from None
        raise

    if cached is not None and rows and rows[0]["strategy"] == "recheck":
        _cache_status(ctx, "hit")
        ctx.metadata["ranking"] = cached.ranking
        return {"candidates": [{k: r[k] for k in CARD_FIELDS} for r in rows], "next_cursor": cached.next_cursor}

    page = rows[: query.limit]
    next_cursor = None
    if len(rows) > query.limit:
        last = page[-1]
        next_cursor = Cursor(last["strategy"], last["tier"], last["rank"], str(last["id"]), after.as_of, digest).encode()
    elif rows and rows[-1]["strategy"] == "hnsw" and rows[-1]["tier"] == 0:
        # the HNSW pool ran out on this page: the rest of the deck is tier 1, from its start
        next_cursor = Cursor("hnsw", 1, None, None, after.as_of, digest).encode()
    ranking = rows[0]["strategy"] if rows else after.strategy
    ctx.metadata["ranking"] = ranking
    _cache_status(ctx, "miss")
    if page and version is not None:
        computed = pages.Page([str(r["id"]) for r in page], next_cursor, ranking, rows[0]["digest"])
        await pages.store(ctx.services, page_key, version, computed)
    return {"candidates": [{k: r[k] for k in CARD_FIELDS} for r in page], "next_cursor": next_cursor}


def _cache_status(ctx: RequestContext, status: str) -> None:
    ctx.metadata["cache_status"] = status
    ctx.response_headers["X-Cache-Status"] = status


def _map_db_error(exc: BaseException) -> errors.AppError | None:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate == "UE404":
        return errors.Unprocessable("create your profile before asking for a deck", code="PROFILE_REQUIRED")
    if sqlstate == "UE422":
        return errors.Unprocessable("max_distance_km needs a location in your profile", code="LOCATION_REQUIRED")
    return None
