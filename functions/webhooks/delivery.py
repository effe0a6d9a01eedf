"""What the two providers' modules hand back to the common path: a parsed delivery (its
dedupe key, type, time, subject) and, once applied, its outcome and effects."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from functions.webhooks.queries import Subscription
from functions.webhooks.state import Transition


@dataclass(frozen=True, slots=True)
class Parsed:
    provider: str
    dedupe_key: str
    event_type: str | None = None
    #: the event's own time when the body has one (else the common path uses received_at)
    event_at: datetime | None = None
    #: the provider's name for the customer (an app user id, an email)
    subject: str | None = None
    #: the validated payload model; None when `invalid`
    event: Any = None
    invalid: str | None = None


@dataclass(slots=True)
class Applied:
    outcome: str
    error: str | None = None
    user_id: str | None = None
    subscription_id: str | None = None
    #: subscriptions written, with how they changed
    changes: list[tuple[Subscription, Transition]] = field(default_factory=list)
    #: users whose tier must be recomputed (owners of changed or moved subscriptions)
    users: set[str] = field(default_factory=set)


def body_key(body: bytes) -> str:
    """The dedupe key of a payload that names nothing better: its content."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def parse_time(value: object) -> datetime | None:
    """An ISO-8601 string ("2016-05-19T07:00:00.000Z") or epoch milliseconds, as UTC."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        if isinstance(value, str):
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return t if t.tzinfo else t.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat() if t is not None else None
