"""The routing table, as data: which event goes to whom, on which channels, how urgently.

An event type has one `Rule`. Recipients come from a named resolver (`routing.RESOLVERS`
look them up in the database, so a user cannot name arbitrary recipients):

- `match`:      both users of a match (`data.match_id`, or the declared pair, checked
                against `public.matches`); a user's own transaction may emit it when the
                user is one of the pair (batch-swipe does)
- `followers`:  everyone who follows `data.artist_id`
- `subject`:    `data.user_id`, else the declared recipients (service events only)
- `owner`:      the owner of `data.media_id`
- `self`:       a user's own transaction may address only that user; a service event
                its declared recipients (or `data.user_id`)
- `declared`:   the recipients the (service) sender listed

Channels: `realtime` (a broadcast to the user's private topic), `push` (FCM / APNs, one
per active device), `cache` (bump a response-cache scope, e.g. the dashboard). Priority:
`urgent` pushes now, `normal` pushes are coalesced per user within the batch window,
`low` is in-app only (Realtime and the inbox, never a push). Tier overrides replace
channels / priority / window for users of that tier.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from shared import errors

Priority = Literal["urgent", "normal", "low"]
Channel = Literal["realtime", "push", "cache"]
REALTIME, PUSH, CACHE = "realtime", "push", "cache"


@dataclass(frozen=True, slots=True)
class Rule:
    event_type: str
    recipients: str
    channels: frozenset[str]
    priority: Priority = "normal"
    #: push text; `{field}` takes the event's data, `{n}` the count in a coalesced push
    title: str = ""
    body: str = ""
    summary: str = "{n} new notifications"
    #: kept in the user's inbox (catch-up after a reconnect)
    inbox: bool = True
    #: may a user's own transaction (enqueue_event as `authenticated`) emit it
    user_origin: bool = False
    #: response-cache scopes to bump per recipient (channel `cache`)
    cache_scopes: tuple[str, ...] = ()
    #: seconds; None: the configured batch window (digest: the digest window)
    window: Literal["batch", "digest"] = "batch"
    collapse: str = ""
    """The kind of notification, `{field}` from the event's data (default: the event type). A
    push of a kind replaces the previous one of that kind on the device, and the providers
    keep only the latest per kind for an offline device (FCM keeps at most 4 kinds), so a
    kind names what a user wants to see once: "match", "message:{conversation_id}"."""
    tiers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def for_tier(self, tier: str) -> Rule:
        override = self.tiers.get(tier)
        if not override:
            return self
        return replace(self, tiers={}, **override)


def _rule(event_type: str, recipients: str, channels: set[str], **kw: Any) -> Rule:
    return Rule(event_type, recipients, frozenset(channels), **kw)


RULES: dict[str, Rule] = {
    r.event_type: r
    for r in (
        _rule("match.created", "match", {REALTIME, PUSH}, priority="urgent", user_origin=True,
              title="It's a match!", body="You have a new match", summary="{n} new matches", collapse="match"),
        _rule("like.received", "declared", {REALTIME, PUSH},
              title="New like", body="Someone likes you", summary="{n} new likes", collapse="likes"),
        _rule("message.received", "declared", {REALTIME, PUSH}, priority="urgent",
              title="New message", body="{preview}", summary="{n} new messages", collapse="message:{conversation_id}"),
        _rule("subscription.changed", "subject", {REALTIME, PUSH, CACHE},
              title="Your plan changed", body="Your plan is now {tier}",
              cache_scopes=("dashboard:{user_id}",), collapse="subscription"),
        _rule("upload.ready", "owner", {REALTIME}, priority="low", user_origin=True),
        _rule("artist.update", "followers", {REALTIME, PUSH},
              title="{artist_name}", body="{headline}", summary="{n} updates from artists you follow",
              collapse="artist:{artist_id}"),
        # breaking news: in real time for paid users, in the digest for free ones
        _rule("artist.breaking", "followers", {REALTIME, PUSH}, priority="urgent",
              title="Breaking: {artist_name}", body="{headline}", summary="{n} updates from artists you follow",
              collapse="artist:{artist_id}",
              tiers={"free": {"channels": frozenset({PUSH}), "priority": "normal", "window": "digest"}}),
        _rule("budget.alert", "self", {REALTIME, PUSH}, user_origin=True,
              title="Budget alert", body="You have used {percent}% of your budget", collapse="budget"),
        _rule("dashboard.invalidate", "self", {REALTIME, CACHE}, priority="low", inbox=False,
              user_origin=True, cache_scopes=("dashboard:{user_id}",)),
    )
}


@dataclass(frozen=True, slots=True)
class TableRoute:
    """A Supabase database webhook (table, operation) that becomes an event."""

    schema: str
    table: str
    operations: frozenset[str]
    event_type: str
    #: recipients: these record columns (uuid)
    recipient_columns: tuple[str, ...]
    #: event data: event field -> record column
    data: Mapping[str, str]
    #: only when this column changed to one of these values (None: always)
    when_column: str | None = None
    when_values: frozenset[str] = frozenset()
    #: an UPDATE routes only when one of these columns changed (empty: any update)
    changed: tuple[str, ...] = ()


TABLE_ROUTES: tuple[TableRoute, ...] = (
    TableRoute("public", "matches", frozenset({"INSERT"}), "match.created",
               ("user_a", "user_b"), {"match_id": "id"}),
    TableRoute("public", "media_objects", frozenset({"INSERT", "UPDATE"}), "upload.ready",
               ("owner_id",), {"media_id": "id", "bucket": "bucket"}, "status", frozenset({"stored"})),
    TableRoute("public", "subscriptions", frozenset({"INSERT", "UPDATE"}), "subscription.changed",
               ("user_id",), {"user_id": "user_id", "status": "status", "tier": "tier"},
               changed=("status", "tier", "plan_code")),
)


def table_event(
    schema: str, table: str, operation: str, record: Mapping[str, Any] | None, old: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any], list[str]] | None:
    """(event type, data, recipients) for a database webhook, or None when nothing routes it.
    A recipient column that holds something other than a uuid is a 400: no real row does."""
    for route in TABLE_ROUTES:
        if (route.schema, route.table) != (schema, table) or operation not in route.operations:
            continue
        if record is None:
            return None
        if route.when_column is not None:
            value = record.get(route.when_column)
            before = (old or {}).get(route.when_column)
            if not isinstance(value, str) or value not in route.when_values or (operation == "UPDATE" and before == value):
                return None
        if operation == "UPDATE" and route.changed and old is not None:
            if all(record.get(c) == old.get(c) for c in route.changed):
                return None
        data = {k: record.get(col) for k, col in route.data.items()}
        recipients = [_user_id(record[c], c) for c in route.recipient_columns if record.get(c)]
        return route.event_type, data, recipients
    return None


def _user_id(value: Any, column: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise errors.ValidationFailed(
            f"invalid body: record.{column}: not a uuid",
            details=[{"field": f"record.{column}", "message": "not a uuid", "type": "uuid_parsing"}],
        ) from None
