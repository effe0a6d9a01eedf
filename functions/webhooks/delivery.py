"""What the two providers' modules hand back to the common path: a parsed delivery (its
dedupe key, type, time, subject) and, once applied, its outcome and effects."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from functions.webhooks.queries import Plan


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
    #: what the fold reads (state.Fact as JSON); None: the event is only recorded
    fact: dict[str, Any] | None = None
    #: the stream the fact belongs to (None: found at apply time, see `waits`)
    stream: str | None = None
    #: identifiers this delivery provides to others (`ref:<charge>`, `rc:<app user id>`)
    keys: list[str] | None = None
    #: the key a stream-less delivery joins a stream by (a refund: its charge's `ref:`)
    waits: str | None = None
    #: why a well-formed event is only recorded (`ignored`)
    ignored: str | None = None

    def locks(self) -> list[str]:
        """Advisory lock names that serialize every delivery that could fold with this one.
        Every transaction takes key locks (`k/`) before stream locks (`s/`), each kind in
        sorted order (a refund or a TRANSFER finds its streams only after its keys are
        locked), so no two can wait for each other in a cycle (except through the keys a
        TRANSFER finds later, along a chain of TRANSFERs: apply._chain)."""
        names = {f"k/{k}" for k in (*(self.keys or ()), *([self.waits] if self.waits else []))}
        if self.provider == "revenuecat" and self.fact and self.fact.get("kind") == "transfer":
            # its receiving users too: a later TRANSFER onwards from them finds this one
            # (apply._chain) only if it is committed, else waits for it
            names.update(f"k/rc:{u}" for u in self.fact.get("to") or ())
        if self.stream:
            names.add(f"s/{self.stream}")
        return sorted(names)


@dataclass(frozen=True, slots=True)
class FoldContext:
    """What a fold may look up, loaded in one round trip before it: `uid:<id>` (a live
    account), `ext:<provider id>` (billing_customers), `email:<email>` -> user id; plans by
    `pp:<provider plan code>` and `code:<our code>`."""

    users: dict[str, str]
    plans: dict[str, Plan]
    allow_sandbox: bool = True
    entitlement_tier: str = "paid"


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
