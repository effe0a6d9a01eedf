"""Routing without I/O: from outbox events, what the database told us about the recipients,
and the time, to the inbox rows and delivery rows to write.

Everything that decides who gets what and when lives here, so it is tested with a clock
and plain values: recipients (resolvers), the rule for the recipient's tier, per-user
channel switches, quiet hours in the user's time zone (pushes held until the window ends,
Realtime still sent), and the batching window (normal pushes for a user join the user's
open batch when it closes within the window).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from typing import Any

from functions.realtime_orchestrator.rules import CACHE, PUSH, REALTIME, RULES, Rule


class Rejected(Exception):
    """The event cannot be routed (unknown type, forged recipients): recorded, not retried."""


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    id: int
    event_id: str
    event_type: str
    payload: Mapping[str, Any]
    recipients: tuple[str, ...]
    actor_id: str | None
    created_at: datetime


@dataclass(slots=True)
class Recipient:
    """What routing needs to know about one user."""

    user_id: str
    tier: str = "free"
    channels: Mapping[str, Any] = field(default_factory=dict)
    quiet_start: time | None = None
    quiet_end: time | None = None
    timezone: str = "UTC"
    #: active devices: (device id, platform)
    devices: tuple[tuple[str, str], ...] = ()
    #: the earliest pending coalesced push not yet due (joinable within the window)
    open_batch: datetime | None = None


@dataclass(slots=True)
class Lookups:
    """Database facts the resolvers check recipients against."""

    #: match id -> (user_a, user_b)
    matches: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: canonical pairs (a < b) that are matches
    pairs: set[tuple[str, str]] = field(default_factory=set)
    #: artist id -> followers
    followers: dict[str, list[str]] = field(default_factory=dict)
    #: media id -> owner
    owners: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InboxRow:
    event_id: str
    user_id: str
    event_type: str
    payload: Mapping[str, Any]


@dataclass(slots=True)
class PlannedDelivery:
    event_id: str
    channel: str
    target: str
    user_id: str
    event_type: str
    priority: str
    available_at: datetime
    payload: dict[str, Any]
    device_id: str | None = None


@dataclass(slots=True)
class Plan:
    inbox: list[InboxRow] = field(default_factory=list)
    deliveries: list[PlannedDelivery] = field(default_factory=list)
    #: outbox id -> why it was not routed
    rejected: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Windows:
    batch: timedelta = timedelta(seconds=60)
    digest: timedelta = timedelta(hours=1)
    topic_prefix: str = "user:"


# -- recipients ------------------------------------------------------------------------------


def as_uuid(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def lookup_keys(events: Iterable[OutboxEvent]) -> dict[str, set[str]]:
    """What the resolvers will ask the database, by kind (one query per kind)."""
    keys: dict[str, set[str]] = {"match": set(), "pair_users": set(), "artist": set(), "media": set()}
    for ev in events:
        rule = RULES.get(ev.event_type)
        if rule is None:
            continue
        if rule.recipients == "match":
            mid = as_uuid(ev.payload.get("match_id"))
            if mid:
                keys["match"].add(mid)
            else:
                keys["pair_users"].update(r for r in ev.recipients if as_uuid(r))
        elif rule.recipients == "followers":
            aid = as_uuid(ev.payload.get("artist_id"))
            if aid:
                keys["artist"].add(aid)
        elif rule.recipients == "owner":
            mid = as_uuid(ev.payload.get("media_id"))
            if mid:
                keys["media"].add(mid)
    return keys


def _declared(ev: OutboxEvent) -> list[str]:
    out = []
    for r in ev.recipients:
        u = as_uuid(r)
        if u is None:
            raise Rejected(f"recipient {r!r} is not a user id")
        out.append(u)
    return out


def resolve(rule: Rule, ev: OutboxEvent, lk: Lookups) -> list[str]:
    """The event's recipients, checked against the database; raises `Rejected`."""
    by_user = ev.actor_id is not None
    if by_user and not rule.user_origin:
        raise Rejected(f"{ev.event_type} may not be emitted from a user's transaction")
    kind = rule.recipients
    if kind == "match":
        mid = as_uuid(ev.payload.get("match_id"))
        if mid:
            pair = lk.matches.get(mid)
            if pair is None:
                raise Rejected("no such match")
        else:
            declared = sorted(set(_declared(ev)))
            if len(declared) != 2 or (declared[0], declared[1]) not in lk.pairs:
                raise Rejected("the recipients are not a match")
            pair = (declared[0], declared[1])
        if by_user and ev.actor_id not in pair:
            raise Rejected("a user may only announce their own match")
        return list(pair)
    if kind == "followers":
        aid = as_uuid(ev.payload.get("artist_id"))
        if aid is None:
            raise Rejected("artist_id is required")
        return list(lk.followers.get(aid, ()))
    if kind == "owner":
        mid = as_uuid(ev.payload.get("media_id"))
        owner = lk.owners.get(mid) if mid else None
        if owner is None:
            raise Rejected("no such media object")
        if by_user and owner != ev.actor_id:
            raise Rejected("a user may only announce their own upload")
        return [owner]
    if kind == "self":
        if by_user:
            declared = set(_declared(ev)) or {ev.actor_id}
            if declared != {ev.actor_id}:
                raise Rejected("a user's event may address only that user")
            return [str(ev.actor_id)]
        subject = as_uuid(ev.payload.get("user_id"))
        return [subject] if subject and not ev.recipients else _declared(ev)
    if kind == "subject":
        subject = as_uuid(ev.payload.get("user_id"))
        return [subject] if subject else _declared(ev)
    if kind == "declared":
        return _declared(ev)
    raise Rejected(f"unknown resolver {kind}")  # a bug in the table, caught by the tests


# -- time ---------------------------------------------------------------------------------------


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return timezone.utc


def quiet_until(r: Recipient, t: datetime) -> datetime | None:
    """When `t` falls in the user's quiet hours, the end of that window (UTC); else None."""
    start, end = r.quiet_start, r.quiet_end
    if start is None or end is None or start == end:
        return None
    tz = _zone(r.timezone)
    local = t.astimezone(tz)
    now_t = local.time().replace(tzinfo=None)
    if start < end:
        inside = start <= now_t < end
        end_day = local.date()
    else:  # the window spans midnight (22:00 -> 07:00)
        inside = now_t >= start or now_t < end
        end_day = local.date() + timedelta(days=1) if now_t >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=tz).astimezone(timezone.utc)


def local_day(r: Recipient, t: datetime) -> Any:
    return t.astimezone(_zone(r.timezone)).date()


# -- the plan ---------------------------------------------------------------------------------


def render(template: str, data: Mapping[str, Any]) -> str:
    """`{field}` replaced by the event's scalar data (missing: empty). Only plain names: no
    attribute or index lookups, no format specs, whatever a template says."""
    import string

    if not template:
        return ""
    out: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return template[:240]
    for literal, name, _spec, _conv in parsed:
        out.append(literal)
        if name is None:
            continue
        if not name.isidentifier():
            out.append("{" + name + "}")
            continue
        value = data.get(name)
        out.append(str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else "")
    return "".join(out)[:240]


def collapse_key(rule: Rule, data: Mapping[str, Any]) -> str:
    """The push's kind (`Rule.collapse` with the event's data); a field the event lacks
    leaves the bare kind ("message", not "message:")."""
    key = render(rule.collapse, data) if rule.collapse else rule.event_type
    return key.rstrip(":") or rule.event_type


def channel_enabled(r: Recipient, channel: str, event_type: str) -> bool:
    prefs = r.channels.get(channel) if isinstance(r.channels, Mapping) else None
    if isinstance(prefs, bool):
        return prefs
    if isinstance(prefs, Mapping):
        value = prefs.get(event_type, prefs.get("*", True))
        return value is not False
    return True


def plan(
    events: Iterable[OutboxEvent],
    recipients: Mapping[str, Recipient],
    lookups: Lookups,
    now: datetime,
    windows: Windows = Windows(),
) -> Plan:
    out = Plan()
    for ev in events:
        base = RULES.get(ev.event_type)
        try:
            if base is None:
                raise Rejected(f"no rule for {ev.event_type}")
            users = resolve(base, ev, lookups)
        except Rejected as exc:
            out.rejected[ev.id] = str(exc)
            continue
        seen: set[str] = set()
        for uid in users:
            r = recipients.get(uid)
            if r is None or uid in seen:  # not a user (deleted) or listed twice
                continue
            seen.add(uid)
            _route_one(out, ev, base.for_tier(r.tier), r, now, windows)
    return out


def _route_one(out: Plan, ev: OutboxEvent, rule: Rule, r: Recipient, now: datetime, w: Windows) -> None:
    data = dict(ev.payload)
    if rule.inbox:
        out.inbox.append(InboxRow(ev.event_id, r.user_id, ev.event_type, data))
    if REALTIME in rule.channels and channel_enabled(r, REALTIME, ev.event_type):
        out.deliveries.append(PlannedDelivery(
            ev.event_id, REALTIME, w.topic_prefix + r.user_id, r.user_id, ev.event_type, rule.priority, now,
            {"event_id": ev.event_id, "type": ev.event_type, "data": data,
             "created_at": ev.created_at.isoformat()},
        ))
    if CACHE in rule.channels:
        for scope in rule.cache_scopes:
            out.deliveries.append(PlannedDelivery(
                ev.event_id, CACHE, scope.format(user_id=r.user_id), r.user_id, ev.event_type, rule.priority, now, {},
            ))
    if PUSH in rule.channels and rule.priority != "low" and r.devices and channel_enabled(r, PUSH, ev.event_type):
        due = _push_due(rule, r, now, w)
        message = {
            "event_id": ev.event_id,
            "type": ev.event_type,
            "title": render(rule.title, data),
            "body": render(rule.body, data),
            "summary": rule.summary,
            "collapse": collapse_key(rule, data),
        }
        for device_id, platform in r.devices:
            out.deliveries.append(PlannedDelivery(
                ev.event_id, PUSH, device_id, r.user_id, ev.event_type, rule.priority, due,
                {**message, "platform": platform}, device_id=device_id,
            ))


def _push_due(rule: Rule, r: Recipient, now: datetime, w: Windows) -> datetime:
    if rule.priority == "urgent":
        due = now
    else:
        window = w.digest if rule.window == "digest" else w.batch
        if r.open_batch is not None and now < r.open_batch <= now + window:
            due = r.open_batch
        else:
            due = now + window
            if r.open_batch is None or r.open_batch <= now or due < r.open_batch:
                r.open_batch = due
    held = quiet_until(r, due)
    return held if held is not None else due
