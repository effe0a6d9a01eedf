"""Settings for batch-swipe: the shared keys plus this function's own."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CoreSettings


class BatchSwipeSettings(CoreSettings):
    #: likes (like or superlike) per user per sliding window, by tier (LIKES_PER_DAY_FREE ...)
    likes_per_day_free: int = Field(100, ge=0)
    likes_per_day_paid: int = Field(1000, ge=0)
    likes_per_day_admin: int = Field(100_000, ge=0)
    #: the sliding window of the like quota
    likes_window_seconds: int = Field(86_400, ge=1)
    #: how long an idempotency key's stored response is kept (the scheduled prune); a replay
    #: after that is answered from the swipes themselves: every item a duplicate, nothing counted
    idempotency_retention_seconds: int = Field(86_400, ge=60)
