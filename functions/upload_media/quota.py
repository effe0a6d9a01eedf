"""Per-user upload quotas through the shared limiter (`shared.ratelimit`): uploads per
hour and MiB per day, each by tier (the tier the limiter reads from Redis, the same one
the webhooks keep up to date). Both sliding windows; one Redis round trip each.

An upload is charged its size rounded up to whole MiB: the limiter's exact window keeps one
entry per unit, so the unit stays coarse (a paid user's 5 GiB day is 5,120 entries).
"""

from __future__ import annotations

import math

from functions.upload_media.settings import MiB, UploadMediaSettings
from shared import errors
from shared.context import RequestContext
from shared.ratelimit import Decision, RateRule


def hourly_rule(s: UploadMediaSettings) -> RateRule:
    return RateRule(
        name="upload-count",
        limits={"anonymous": 0, "free": s.upload_hourly_free, "paid": s.upload_hourly_paid, "admin": s.upload_hourly_admin},
        window_seconds=3600,
    )


def daily_bytes_rule(s: UploadMediaSettings) -> RateRule:
    return RateRule(
        name="upload-mib",
        limits={"anonymous": 0, "free": s.upload_daily_mib_free, "paid": s.upload_daily_mib_paid, "admin": s.upload_daily_mib_admin},
        window_seconds=86400,
    )


def mib(size: int) -> int:
    return max(1, math.ceil(size / MiB))


def _refused(decision: Decision, what: str, code: str) -> errors.RateLimited:
    headers = {"Retry-After": str(max(decision.retry_after, 1))} if decision.retry_after >= 0 else {}
    when = f"; try again in {decision.retry_after} s" if decision.retry_after >= 0 else ""
    return errors.RateLimited(
        f"{what} quota of the {decision.tier} tier reached ({decision.limit}){when}",
        code=code,
        headers=headers,
        details={"tier": decision.tier, "limit": decision.limit, "retry_after": decision.retry_after},
    )


async def charge_upload(ctx: RequestContext, s: UploadMediaSettings) -> None:
    """One upload against the hourly count (429 UPLOAD_QUOTA_EXCEEDED when it is used up)."""
    d = await ctx.services.rate_limiter.check(hourly_rule(s), ctx.user_id, user_id=ctx.user_id, tier_hint=ctx.tier)
    if not d.allowed:
        raise _refused(d, "hourly upload", "UPLOAD_QUOTA_EXCEEDED")


async def charge_bytes(ctx: RequestContext, s: UploadMediaSettings, size: int) -> None:
    """`size` bytes against the daily volume (429 UPLOAD_BYTES_QUOTA_EXCEEDED)."""
    d = await ctx.services.rate_limiter.check(
        daily_bytes_rule(s), ctx.user_id, user_id=ctx.user_id, tier_hint=ctx.tier, cost=mib(size)
    )
    if not d.allowed:
        raise _refused(d, "daily upload volume (MiB)", "UPLOAD_BYTES_QUOTA_EXCEEDED")
