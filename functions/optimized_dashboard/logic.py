"""The dashboard: one Postgres round trip on a miss, the edge cache otherwise.

`load` runs `public.spending_dashboard()` as the caller (RLS applies) and hands its JSON
text through untouched (an `orjson.Fragment`: never parsed into floats, never re-encoded).
GET is cached by the shared pipeline (`CachePolicy` on the route). POST, which existing
clients use, is not cached by the pipeline (it caches GET and HEAD); `load_cached` gives it
the same entries as the GET of the same parameters, with stale-on-error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from functions.optimized_dashboard.invalidation import version_scope
from shared import errors
from shared.cache import CachePolicy, Payload, decode_entry

if TYPE_CHECKING:
    from functions.optimized_dashboard.models import DashboardQuery
    from shared.context import RequestContext

#: 5 minutes, as the apps' clients expect; writes bump the version before that (README.md)
CACHE = CachePolicy(ttl=300, version=lambda ctx: version_scope(ctx.user_id))

#: the time comes from the function's clock (`services.clock`), not the database's: one clock
#: for the periods, `generated_at` and the cache, and tests can move it
DASHBOARD_SQL = "select public.spending_dashboard(%s, %s, %s, %s)::text as dashboard"
ANALYTICS_TIERS = frozenset({"paid", "admin"})
#: what the handler adds to the metadata, stored with the cached data
OWN_METADATA = ("user_tier", "generated_at")


def _caller(ctx: RequestContext) -> str:
    return ctx.end_user("the dashboard is")


async def load(ctx: RequestContext, query: DashboardQuery) -> orjson.Fragment:
    """Compute the caller's dashboard: one round trip (BEGIN, claims, the call, COMMIT)."""
    _caller(ctx)
    settings: Any = ctx.settings
    analytics = query.include_analytics and ctx.tier in ANALYTICS_TIERS
    now = datetime.fromtimestamp(ctx.services.clock(), UTC)
    row = await ctx.services.db.fetchrow(
        DASHBOARD_SQL,
        (query.range, analytics, settings.dashboard_default_monthly_budget, now),
        principal=ctx.principal,
        read_only=settings.dashboard_use_read_replica,
    )
    assert row is not None  # a scalar function always returns a row
    ctx.metadata["user_tier"] = ctx.tier
    ctx.metadata["generated_at"] = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if ctx.state.get("cache_bypass"):  # Redis is down: the pipeline serves this uncached
        ctx.metadata["cache_status"] = "bypass"
    return orjson.Fragment(row["dashboard"])


async def load_cached(ctx: RequestContext, query: DashboardQuery, get_route: str) -> orjson.Fragment:
    """POST: the GET route's cache entry for the same parameters (one more Redis round
    trip), else `load` and store; a stale entry when the database is down."""
    from shared.kv import KVCommandError, KVUnavailable

    user_id = _caller(ctx)
    cache = ctx.services.response_cache
    version_key, entry_key, _ = cache.keys_for(get_route, user_id, query.model_dump(mode="json"), version_scope(user_id))
    version: str | None = None
    entry = None
    now_ms = 0
    if not ctx.state.get("cache_bypass"):  # Redis already failed this request
        try:
            # the cache's clock is Redis's, as in the GET path (the limiter's script reads TIME)
            version, raw, (secs, micros) = await ctx.services.kv.pipeline(
                [["GET", version_key], ["GET", entry_key], ["TIME"]]
            )
            entry = decode_entry(raw if isinstance(raw, str) else None)
            now_ms = int(secs) * 1000 + int(micros) // 1000
        except KVUnavailable:
            ctx.state["cache_bypass"] = True
    version = version if isinstance(version, str) else None
    if entry is not None and entry.is_fresh(version, now_ms):
        return _serve_entry(ctx, entry.payload, "hit")
    try:
        data = await load(ctx, query)
    except errors.ServiceUnavailable:
        if entry is None:
            raise
        return _serve_entry(ctx, entry.payload, "stale")
    if ctx.state.get("cache_bypass"):
        return data
    payload = Payload.of(data, {k: ctx.metadata[k] for k in OWN_METADATA})
    try:
        await cache.store(entry_key, None, version, now_ms, CACHE, payload, payload.etag())
    except (KVUnavailable, KVCommandError):
        pass  # served all the same; the next read computes again
    ctx.metadata["cache_status"] = "miss"
    return data


def _serve_entry(ctx: RequestContext, payload: Payload, status: str) -> orjson.Fragment:
    ctx.metadata.update(payload.metadata)
    ctx.metadata["cache_status"] = status
    return orjson.Fragment(payload.data_json)
