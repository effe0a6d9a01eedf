"""Settings for batch-swipe: the shared keys plus this function's own."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CoreSettings


class BatchSwipeSettings(CoreSettings):
    likes_per_day_free: int = Field(100, ge=0)
    """Likes (like or superlike) a free-tier user may give per window (LIKES_WINDOW_SECONDS)."""
    likes_per_day_paid: int = Field(1000, ge=0)
    """Likes a paid-tier user may give per window."""
    likes_per_day_admin: int = Field(100_000, ge=0)
    """Likes an admin may give per window."""
    likes_window_seconds: int = Field(86_400, ge=1)
    """The sliding window of the like quota, in seconds."""
    idempotency_retention_seconds: int = Field(86_400, ge=60)
    """How long an idempotency key's stored response is kept (the scheduled prune); a replay
    after that is answered from the swipes themselves: every item a duplicate, nothing counted"""
