"""Request and response models of realtime-orchestrator."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class InternalEvent(BaseModel):
    """An event from one of our functions, signed the Standard Webhooks way. The
    `webhook-id` header is the event's idempotency key."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$", max_length=100, description="event type, e.g. match.created")
    timestamp: datetime | None = Field(default=None, description="when it happened (informational)")
    data: dict[str, Any] = Field(default_factory=dict, description="the event's data, delivered as its payload")
    recipients: list[UUID] = Field(default_factory=list, max_length=10_000,
                                   description="user ids, for event types whose rule takes declared recipients")


class DatabaseWebhook(BaseModel):
    """A Supabase database webhook (pg_net): the changed row of a table."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    type: Literal["INSERT", "UPDATE", "DELETE"]
    table: str = Field(max_length=63)
    schema_: str = Field(alias="schema", max_length=63)
    record: dict[str, Any] | None = None
    old_record: dict[str, Any] | None = None


class Accepted(BaseModel):
    event_id: str | None = Field(description="the event's id in the outbox (null when nothing routes it)")
    event_type: str | None = None
    duplicate: bool = Field(False, description="this event was accepted before; nothing new was stored")
    ignored: str | None = Field(None, description="why a database webhook produced no event")
    drained: dict[str, Any] | None = Field(
        None, description="what the drain run before answering did (inline mode, on Lambda); null when it runs after the response"
    )


class InboxQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: int | None = Field(None, ge=0, description="the cursor from the previous page (or a realtime message's id)")
    limit: int = Field(100, ge=1, le=500)


class InboxEvent(BaseModel):
    id: int = Field(description="the cursor position of this event")
    event_id: str | None
    type: str
    data: dict[str, Any]
    created_at: datetime


class InboxPage(BaseModel):
    events: list[InboxEvent]
    cursor: str = Field(description="pass as `since` to get what came after")
    has_more: bool
