"""The deck: one Postgres round trip on a miss (`public.deck`, migration 0011), the edge
cache otherwise.

Cached per user and filter set (and cursor) for 5 minutes. batch-swipe bumps the version
scope `deck:<user>` after every swipe it commits, so a cached deck is never served once a
swipe's response has been sent: the next read recomputes, and the database excludes
everyone already swiped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from functions.recommendations.cursor import Cursor, decode, filters_digest
from shared import errors
from shared.cache import CachePolicy

if TYPE_CHECKING:
    from functions.recommendations.models import DeckQuery
    from functions.recommendations.settings import RecommendationsSettings
    from shared.context import RequestContext


def deck_scope(user_id: str) -> str:
    """The data-version scope batch-swipe bumps (spelled there too: each function ships alone)."""
    return f"deck:{user_id}"


CACHE = CachePolicy(ttl=300, version=lambda ctx: deck_scope(ctx.user_id))

DECK_SQL = (
    "select id, display_name, age, distance_km, bio, photos, rank, tier, strategy"
    " from public.deck(%s, %s::text[], %s, %s, %s, %s, %s, %s, %s, %s, %s::float8[], %s, %s, %s, %s)"
)


def caller(ctx: RequestContext) -> str:
    return ctx.end_user("a deck is")


async def load(ctx: RequestContext, query: DeckQuery) -> dict[str, Any]:
    caller(ctx)
    settings: RecommendationsSettings = ctx.settings  # type: ignore[assignment]
    digest = filters_digest(query.filters())
    if query.cursor is not None:
        after = decode(query.cursor, digest)
    else:
        now = datetime.now(UTC).replace(microsecond=0)
        after = Cursor(settings.deck_strategy, 0, None, None, now, digest)
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

    page = rows[: query.limit]
    next_cursor = None
    if len(rows) > query.limit:
        last = page[-1]
        next_cursor = Cursor(last["strategy"], last["tier"], last["rank"], str(last["id"]), after.as_of, digest).encode()
    elif rows and rows[-1]["strategy"] == "hnsw" and rows[-1]["tier"] == 0:
        # the HNSW pool ran out on this page: the rest of the deck is tier 1, from its start
        next_cursor = Cursor("hnsw", 1, None, None, after.as_of, digest).encode()
    ctx.metadata["ranking"] = rows[0]["strategy"] if rows else after.strategy
    return {
        "candidates": [
            {k: r[k] for k in ("id", "display_name", "age", "distance_km", "bio", "photos")} for r in page
        ],
        "next_cursor": next_cursor,
    }


def _map_db_error(exc: BaseException) -> errors.AppError | None:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate == "UE404":
        return errors.Unprocessable("create your profile before asking for a deck", code="PROFILE_REQUIRED")
    if sqlstate == "UE422":
        return errors.Unprocessable("max_distance_km needs a location in your profile", code="LOCATION_REQUIRED")
    return None
