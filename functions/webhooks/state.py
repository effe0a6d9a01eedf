"""A subscription's state and how one provider event changes it. No I/O: both providers
turn their events into a `Change`, and `reduce` applies it to the stored `SubState`.

Providers retry and reorder, so every rule here is safe to apply twice and in any order:

- `status`, and a period end given as `set`, are ordered by the event's own time: an event
  older than the newest one applied (`last_event_at`) changes neither (a late CANCELLATION
  never overwrites a newer RENEWAL); the same event again sets the same values;
- a period end given as `extend_to` only ever moves the end later (money that was paid
  stays paid, whatever arrives after it);
- `force` (a provider re-read, a refund) sets the value whatever the order: it is the
  provider's current truth, or a correction recorded once per charge.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

#: statuses that grant the subscription's tier until `current_period_end`
GRANTING = frozenset({"active", "non_renewing", "cancelled", "past_due", "paused"})
#: "never expires" (a lifetime purchase), as a timestamp Postgres and Python both hold
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)

Rule = Literal["set", "extend_to", "force"]


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
class Change:
    event_at: datetime
    status: str | None = None
    status_rule: Literal["set", "force"] = "set"
    tier: str | None = None
    plan_code: str | None = None
    period_end: datetime | None = None
    period_rule: Rule = "set"
    #: merged into the stored metadata (top-level keys replace)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Transition:
    before: SubState
    after: SubState
    #: the event was older than the newest applied one, so its ordered parts were skipped
    stale: bool

    @property
    def changed(self) -> bool:
        b, a = self.before, self.after
        return (b.status, b.tier, b.plan_code, b.current_period_end) != (a.status, a.tier, a.plan_code, a.current_period_end)


def reduce(state: SubState, change: Change) -> Transition:
    stale = state.last_event_at is not None and change.event_at < state.last_event_at
    new = state
    if not stale:
        if change.status is not None:
            new = replace(new, status=change.status)
        if change.tier is not None:
            new = replace(new, tier=change.tier)
        if change.plan_code is not None:
            new = replace(new, plan_code=change.plan_code)
        if change.period_end is not None and change.period_rule == "set":
            new = replace(new, current_period_end=change.period_end)
        if change.status is not None or (change.period_end is not None and change.period_rule == "set"):
            new = replace(new, last_event_at=change.event_at)
    if change.status is not None and change.status_rule == "force":
        new = replace(new, status=change.status)
    if change.period_end is not None:
        if change.period_rule == "extend_to":
            end = new.current_period_end
            new = replace(new, current_period_end=change.period_end if end is None else max(end, change.period_end))
        elif change.period_rule == "force":
            new = replace(new, current_period_end=change.period_end)
    if change.metadata and (not stale or change.period_rule != "set"):
        new = replace(new, metadata={**new.metadata, **change.metadata})
    if change.status_rule == "force" or change.period_rule == "force":
        last = new.last_event_at
        new = replace(new, last_event_at=change.event_at if last is None else max(last, change.event_at))
    return Transition(state, new, stale and change.status_rule != "force" and change.period_rule != "force")


def add_interval(start: datetime, interval: str) -> datetime:
    """`start` plus one billing interval, by the calendar (Jan 31 + 1 month = Feb 28/29)."""
    months = {"monthly": 1, "quarterly": 3, "biannually": 6, "yearly": 12, "annually": 12}.get(interval)
    if months is None:
        days = {"daily": 1, "weekly": 7}.get(interval)
        if days is None:
            raise ValueError(f"unknown billing interval {interval!r}")
        return start + timedelta(days=days)
    month0 = start.month - 1 + months
    year, month = start.year + month0 // 12, month0 % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)

