"""Request and response models of batch-swipe."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

Action = Literal["like", "pass", "superlike"]
ItemResult = Literal["applied", "duplicate", "invalid_target", "self", "blocked", "quota_exceeded"]
MAX_SWIPES = 50


class SwipeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_id: UUID = Field(description="The profile swiped on")
    action: Action = Field(description="like, pass or superlike (a superlike counts as a like for the quota)")


class BatchSwipeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    swipes: list[SwipeIn] = Field(
        min_length=1, max_length=MAX_SWIPES, description=f"1 to {MAX_SWIPES} swipes, applied in order"
    )
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
        description="Replaying a key returns the first response and writes nothing (printable ASCII, at most 200)",
    )


class SwipeResult(BaseModel):
    index: int = Field(description="Position of the swipe in the request")
    target_id: UUID
    action: Action
    result: ItemResult = Field(
        description="applied; duplicate (already swiped the same way, or repeated in this batch); "
        "invalid_target (no such visible profile); self; blocked (either way); "
        "quota_exceeded (past the daily like quota)"
    )


class Summary(BaseModel):
    applied: int
    duplicate: int
    invalid_target: int
    self: int
    blocked: int
    quota_exceeded: int


class NewMatch(BaseModel):
    match_id: UUID
    user_id: UUID = Field(description="The other person in the match")


class LikeQuota(BaseModel):
    applied: int = Field(description="Likes this request applied (the quota counts these)")
    limit: int | None = Field(None, description="Likes allowed per window for the caller's tier")
    remaining: int | None = Field(None, description="Likes left in the window after this request")


class BatchSwipeResult(BaseModel):
    results: list[SwipeResult]
    summary: Summary
    matches: list[NewMatch] = Field(description="Matches this request created (each pair exactly once)")
    likes: LikeQuota
