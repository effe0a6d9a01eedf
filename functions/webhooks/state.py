"""A subscription's state as a function of the SET of its recorded events. No I/O.

Providers retry for days and promise no order, so nothing here depends on arrival order:
every delivery is stored with a `Fact` (its normalized meaning, `webhook_deliveries.fact`),
grouped into a *stream* (the events that can touch the same subscriptions: a Paystack
customer, a RevenueCat purchase), and each delivery re-derives its stream's subscriptions
by folding ALL the stream's facts, in this order (`order_key`):

1. provider time (`Fact.at`: Paystack `paid_at` / invoice `created_at` / `createdAt`,
   RevenueCat `event_timestamp_ms`, a snapshot's fetch time);
2. events WITHOUT a provider time of their own (Paystack `subscription.not_renew`,
   `subscription.disable`, `refund.processed`, which carry only the subscription's or
   nothing's creation time) sort after every timed event. That is safe because their
   effects are monotone and commute: not_renew and disable only move a subscription
   forward along active -> non_renewing -> cancelled (never back), and refunds subtract
   paid periods per charge reference;
3. ties by `RANK` of the kind (a payment after the failure it cures, a snapshot last);
4. then by the delivery's dedupe key (unique per provider), so the order is total.

Arrival order is never an input: any permutation of the same set, with any duplicates
(a duplicate is the same stored row), folds to the same subscriptions, charges, refunds
and tiers. An event that cannot take effect yet (a refund whose charge has not arrived, an
invoice before the subscription.create that names its plan, a TRANSFER before the purchase)
gets the per-event result `pending`; the next delivery of its stream folds it again, so it
applies, in that delivery's transaction, as soon as what it waits for is recorded.

Provider snapshots (the provider's own answer, fetched at time T: Paystack
`GET /subscription/:code`, RevenueCat `GET /v1/subscribers/{id}`) enter the same fold as a
fact of kind `provider_snapshot` with `at = T` and RANK above everything else at T
(`snapshot_fact`). From there on it sets status, period end and plan as a `force`:
everything the webhooks said up to T is replaced by the provider's truth, events the
provider timed after T still apply after it, and the timeless Paystack notices can only
move it forward (see 2). Attach it to the delivery whose re-read fetched it
(`Parsed.snapshot`, stored inside that delivery's fact), or record it on its own (a
reconciliation correction) as a delivery of event type `provider_snapshot`; either way
every later fold of the stream keeps applying it.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

#: statuses that grant the subscription's tier until `current_period_end`
GRANTING = frozenset({"active", "non_renewing", "cancelled", "past_due", "paused"})
#: "never expires" (a lifetime purchase), as a timestamp Postgres and Python both hold
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)
#: where events without a provider time sort (after every timed one)
TIMELESS = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

#: tie-break between events with the same provider time (lower first)
RANK: dict[str, int] = {
    # Paystack
    "sub_create": 0, "invoice_open": 1, "invoice_failed": 2, "charge": 3, "invoice_paid": 3,
    "not_renew": 4, "disable": 5, "refund": 6,
    # RevenueCat (a TRANSFER applies after the purchase events of its millisecond)
    "rc": 3, "transfer": 7,
    # the provider's own answer, fetched at that time, wins over every webhook of that time
    "provider_snapshot": 9,
}
#: outcomes a later fold may change (anything else was decided on the delivery alone)
FOLDED = frozenset({"received", "pending", "applied", "stale", "flagged"})


@dataclass(frozen=True, slots=True)
class SubState:
    status: str = "pending"
    tier: str = "free"
    plan_code: str | None = None
    current_period_end: datetime | None = None
    last_event_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def grants(self, now: datetime) -> bool:
        return self.status in GRANTING and self.current_period_end is not None and self.current_period_end > now


@dataclass(frozen=True, slots=True)
class Fact:
    """One recorded delivery, normalized: what the fold reads (stored as JSON)."""

    delivery_id: int
    key: str
    kind: str
    at: datetime | None
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "at": self.at.isoformat() if self.at else None, **self.data}

    @classmethod
    def from_json(cls, delivery_id: int, key: str, doc: dict[str, Any]) -> Fact:
        doc = dict(doc)
        kind, at = doc.pop("kind"), doc.pop("at", None)
        return cls(delivery_id, key, kind, datetime.fromisoformat(at) if at else None, doc)


def order_key(f: Fact) -> tuple[datetime, int, str]:
    return (f.at or TIMELESS, RANK.get(f.kind, 5), f.key)


def snapshot_fact(delivery_id: int, key: str, *, fetched_at: datetime, status: str,
                  period_end: datetime | None, plan_code: str | None = None, **data: Any) -> Fact:
    """The provider's answer at `fetched_at`, as a fold input. `data` names the subscription
    (Paystack: `subscription_code`; RevenueCat: the stream's purchase is implied)."""
    return Fact(delivery_id, key, "provider_snapshot", fetched_at,
                {"status": status, "period_end": period_end.isoformat() if period_end else None,
                 "plan_code": plan_code, **data})


@dataclass(slots=True)
class Result:
    """What the fold decided for one delivery."""

    outcome: str = "applied"
    error: str | None = None
    user_id: str | None = None
    #: the subscription row it belongs to (the row's provider_ref)
    ref: str | None = None


@dataclass(slots=True)
class Row:
    """A subscription as the fold builds it."""

    ref: str
    owner: str | None = None
    state: SubState = field(default_factory=SubState)
    #: the newest provider time of a fact that took effect (for `stale`)
    newest: tuple[datetime, int, str] | None = None

    def touch(self, f: Fact) -> None:
        k = order_key(f)
        if self.newest is None or k > self.newest:
            self.newest = k


@dataclass(slots=True)
class Folded:
    rows: dict[str, Row] = field(default_factory=dict)
    results: dict[int, Result] = field(default_factory=dict)
    #: customer ids learnt for a user (provider external id -> user)
    learnt: dict[str, str] = field(default_factory=dict)


def add_interval(start: datetime, interval: str) -> datetime:
    """`start` plus one billing interval, by the calendar (Jan 31 + 1 month = Feb 28/29)."""
    months = {"monthly": 1, "quarterly": 3, "biannually": 6, "yearly": 12, "annually": 12}.get(interval)
    if months is None:
        days = {"daily": 1, "weekly": 7, "hourly": 0}.get(interval)
        if days is None:
            raise ValueError(f"unknown billing interval {interval!r}")
        return start + (timedelta(days=days) if days else timedelta(hours=1))
    month0 = start.month - 1 + months
    year, month = start.year + month0 // 12, month0 % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


def expand(facts: list[Fact]) -> list[Fact]:
    """The facts plus the provider snapshots riding on them: a re-read's answer enters the
    fold as a fact of its own, at its fetch time (each provider's `with_truth` stores the
    answer on the delivery's fact as `snapshot`)."""
    out = list(facts)
    for f in facts:
        snap = f.data.get("snapshot")
        if snap:
            out.append(Fact(f.delivery_id, f.key + "#snapshot", "provider_snapshot", parse_dt(snap["at"]), snap))
    return out


def parse_dt(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value) if isinstance(value, str) else value  # type: ignore[no-any-return]
