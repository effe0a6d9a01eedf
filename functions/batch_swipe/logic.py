"""Applying a batch of swipes.

Per request: the like quota in Redis (the shared limiter, cost = the likes that may apply,
partial grants), then ONE Postgres round trip (`public.apply_swipes`, migration 0011: per-item
validation, the writes, matches, outbox events, the idempotency record, all in one
transaction), then the unused part of the grant back to the limiter (only when some likes
turned out not to apply) and one Redis round trip that invalidates the decks involved.

Why the quota is taken before the database: the database call is the only one allowed to
write, and it needs to know how many likes it may apply. Likes that then turn out to be
duplicates, invalid, blocked or replays are refunded, so only applied likes are counted
(`ZPOPMAX` of as many entries of the sliding window: the newest, i.e. this request's, or a
concurrent one's of the same user, which is the same count).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from shared import errors
from shared.observability import json_log
from shared.ratelimit import RateRule

if TYPE_CHECKING:
    from functions.batch_swipe.models import BatchSwipeBody
    from functions.batch_swipe.settings import BatchSwipeSettings
    from shared.context import RequestContext

APPLY_SQL = "select public.apply_swipes(%s::uuid[], %s::text[], %s, %s, %s, %s, %s)::text as outcome"
LIKES = frozenset({"like", "superlike"})


def deck_scope(user_id: str) -> str:
    """The data-version scope of a user's deck: the recommendations route's
    `CachePolicy.version` returns the same (each function ships alone, so it is spelled
    in both)."""
    return f"deck:{user_id}"


@lru_cache(maxsize=8)
def _like_rule(free: int, paid: int, admin: int, window: int) -> RateRule:
    return RateRule(name="likes", limits={"anonymous": 0, "free": free, "paid": paid, "admin": admin}, window_seconds=window)


def like_rule(settings: BatchSwipeSettings) -> RateRule:
    return _like_rule(settings.likes_per_day_free, settings.likes_per_day_paid, settings.likes_per_day_admin,
                      settings.likes_window_seconds)


def caller(ctx: RequestContext) -> str:
    return ctx.end_user("swipes are")


def idempotency_key(ctx: RequestContext, body: BatchSwipeBody) -> str | None:
    """The body's `idempotency_key`, else the `Idempotency-Key` header; both must agree."""
    header = ctx.headers.get("idempotency-key")
    if header is not None and not (1 <= len(header) <= 200 and header.isascii() and header.isprintable() and " " not in header):
        raise errors.ValidationFailed("the Idempotency-Key header must be 1 to 200 printable ASCII characters",
                                      code="VALIDATION_ERROR", details=[{"field": "Idempotency-Key", "message": "invalid"}])
    if body.idempotency_key is not None and header is not None and header != body.idempotency_key:
        raise errors.ValidationFailed("idempotency_key and the Idempotency-Key header differ", code="VALIDATION_ERROR",
                                      details=[{"field": "idempotency_key", "message": "differs from the header"}])
    return body.idempotency_key or header


def request_hash(targets: list[str], actions: list[str]) -> str:
    return hashlib.sha256(orjson.dumps([targets, actions])).hexdigest()


async def apply_batch(ctx: RequestContext) -> Any:
    from shared.kv import KVUnavailable

    user_id = caller(ctx)
    body: BatchSwipeBody = ctx.body
    settings: BatchSwipeSettings = ctx.settings  # type: ignore[assignment]
    targets = [str(s.target_id) for s in body.swipes]
    actions = [s.action for s in body.swipes]
    key = idempotency_key(ctx, body)

    # the most likes this batch can apply: one per distinct target, never oneself
    wanted = len({t for t, a in zip(targets, actions, strict=True) if a in LIKES and t != user_id})
    rule = like_rule(settings)
    granted = 0
    limit = remaining = None
    if wanted:
        try:
            decision = await ctx.services.rate_limiter.check(
                rule, user_id, user_id=user_id, tier_hint=ctx.tier, cost=wanted, partial=True
            )
        except KVUnavailable:
            raise errors.ServiceUnavailable(
                "the like quota cannot be checked right now; try again shortly",
                code="LIKE_QUOTA_UNAVAILABLE", headers={"Retry-After": "1"},
            ) from None
        granted, limit, remaining = decision.granted, decision.limit, max(decision.remaining, 0)

    try:
        row = await ctx.services.db.fetchrow(
            APPLY_SQL,
            (targets, actions, granted, key, request_hash(targets, actions) if key else None, limit, remaining),
            # as the service for the verified caller: apply_swipes is not granted to users,
            # who could otherwise call it through the REST API with a like budget of their own
            principal=ctx.principal,
            service=True,
        )
    except BaseException as exc:
        if granted:
            await refund(ctx, rule, user_id, granted)
        mapped = _map_db_error(exc)
        if mapped is not None:
            raise mapped from None
        raise
    assert row is not None  # a scalar function always returns a row
    outcome = orjson.loads(row["outcome"])
    response: dict[str, Any] = outcome["response"]

    unused = granted if outcome["replayed"] else granted - int(response["likes"]["applied"])
    if unused > 0:
        await refund(ctx, rule, user_id, unused)
    if outcome["replayed"]:
        if not outcome["hash_matches"]:
            raise errors.Conflict(
                "this idempotency key was used for a different batch", code="IDEMPOTENCY_KEY_REUSED"
            )
        ctx.metadata["replayed"] = True

    # the caller's deck, and the new matches' decks, in one round trip (also on a replay:
    # if the first attempt's invalidation failed, this one repairs it)
    await invalidate_decks(ctx, [user_id, *(m["user_id"] for m in response["matches"])])
    return response


async def prune_requests(services: Any) -> dict[str, Any]:
    """Delete `swipe_requests` rows older than the retention (one statement, as the service)."""
    settings: BatchSwipeSettings = services.settings
    row = await services.db.fetchrow(
        "select public.prune_swipe_requests(make_interval(secs => %s)) as pruned",
        (settings.idempotency_retention_seconds,), service=True,
    )
    pruned = int(row["pruned"]) if row else 0
    json_log.log("info", "pruned idempotency records", pruned=pruned)
    return {"ok": True, "pruned": pruned}


async def refund(ctx: RequestContext, rule: RateRule, user_id: str, n: int) -> None:
    """Give `n` units of the like quota back (best effort: a failure only under-counts
    what the user may still like until the window slides)."""
    from shared.kv import KVUnavailable

    try:
        await ctx.services.kv.execute("ZPOPMAX", ctx.services.rate_limiter.window_key(rule, user_id), n)
    except KVUnavailable as exc:
        json_log.log("warning", "like quota refund failed", request_id=ctx.request_id, units=n, error=repr(exc))


async def invalidate_decks(ctx: RequestContext, user_ids: list[str]) -> None:
    """Bump the deck version of each user (what `response_cache.bump(deck_scope(u))` does,
    for all of them in one pipeline)."""
    from shared.kv import KVUnavailable

    cache = ctx.services.response_cache
    commands = [["INCR", cache.version_key(deck_scope(u))] for u in dict.fromkeys(user_ids)]
    try:
        await ctx.services.kv.pipeline(commands)
    except KVUnavailable as exc:
        # the swipes are committed; a deck cached before them may be served until its TTL
        ctx.metadata["deck_invalidated"] = False
        json_log.log("warning", "deck invalidation failed", request_id=ctx.request_id, error=repr(exc))


def _map_db_error(exc: BaseException) -> errors.AppError | None:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate == "UE404":
        return errors.Unprocessable("create your profile before swiping", code="PROFILE_REQUIRED")
    return None
