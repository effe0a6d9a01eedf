"""Routing without I/O: the rules table, resolvers, tiers, channel switches, quiet hours and
batching windows, with plain values and a fixed time."""

from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta, timezone

import pytest

from functions.realtime_orchestrator.routing import (
    Lookups, OutboxEvent, Recipient, Windows, channel_enabled, plan, quiet_until, render,
)
from functions.realtime_orchestrator.rules import RULES, table_event

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
A, B, C = (str(uuid.UUID(int=i)) for i in (1, 2, 3))


def ev(event_type: str, payload: dict | None = None, recipients: tuple[str, ...] = (), actor: str | None = None,
       n: int = 1) -> OutboxEvent:
    return OutboxEvent(n, str(uuid.UUID(int=1000 + n)), event_type, payload or {}, recipients, actor, NOW)


def users(*ids: str, **kw: object) -> dict[str, Recipient]:
    return {u: Recipient(u, devices=((f"dev-{u[-1]}", "fcm"),), **kw) for u in ids}  # type: ignore[arg-type]


def test_every_rule_uses_a_known_resolver_and_channel() -> None:
    for rule in RULES.values():
        assert rule.recipients in {"match", "followers", "subject", "owner", "self", "declared"}
        assert rule.channels <= {"realtime", "push", "cache"} and rule.channels
        assert bool(rule.cache_scopes) == ("cache" in rule.channels)
        for override in rule.tiers.values():
            assert set(override) <= {"channels", "priority", "window", "title", "body", "summary"}


def test_match_recipients_come_from_the_matches_table() -> None:
    mid = str(uuid.uuid4())
    lk = Lookups(matches={mid: (A, B)}, pairs={(A, B)})
    p = plan([ev("match.created", {"match_id": mid}, (A, C), actor=A)], users(A, B, C), lk, NOW)
    assert {d.user_id for d in p.deliveries} == {A, B}  # the declared C is ignored
    # a user announcing someone else's match, or a pair that is no match
    p = plan([ev("match.created", {"match_id": mid}, actor=C, n=2),
              ev("match.created", {}, (A, C), actor=A, n=3),
              ev("match.created", {}, (A, B), actor=A, n=4)], users(A, B, C), lk, NOW)
    assert set(p.rejected) == {2, 3} and {d.user_id for d in p.deliveries} == {A, B}


def test_service_only_rules_refuse_user_transactions() -> None:
    p = plan([ev("like.received", {}, (B,), actor=A), ev("subscription.changed", {"user_id": B}, actor=A, n=2)],
             users(A, B), Lookups(), NOW)
    assert set(p.rejected) == {1, 2} and not p.deliveries and not p.inbox


def test_self_events_from_a_user_address_only_that_user() -> None:
    ok = ev("dashboard.invalidate", {"table": "purchases"}, (A,), actor=A)
    bad = ev("dashboard.invalidate", {}, (A, B), actor=A, n=2)
    p = plan([ok, bad], users(A, B), Lookups(), NOW)
    assert set(p.rejected) == {2}
    assert {(d.channel, d.target) for d in p.deliveries} == {("realtime", f"user:{A}"), ("cache", f"dashboard:{A}")}
    assert p.inbox == []  # invalidations are not kept in the inbox
    service = plan([ev("dashboard.invalidate", {}, (A, B))], users(A, B), Lookups(), NOW)
    assert {d.target for d in service.deliveries if d.channel == "cache"} == {f"dashboard:{A}", f"dashboard:{B}"}


def test_unknown_users_and_bad_ids_are_skipped_or_rejected() -> None:
    p = plan([ev("like.received", {}, (A, C, A)), ev("like.received", {}, ("nope",), n=2)], users(A), Lookups(), NOW)
    assert set(p.rejected) == {2}
    assert [d.user_id for d in p.deliveries if d.channel == "realtime"] == [A]  # C is no user; A once


def test_followers_and_tier_overrides() -> None:
    artist = str(uuid.uuid4())
    lk = Lookups(followers={artist: [A, B]})
    rs = {**users(A, tier="paid"), **users(B, tier="free")}
    p = plan([ev("artist.breaking", {"artist_id": artist, "artist_name": "IVE", "headline": "Tour"})], rs, lk, NOW,
             Windows(digest=timedelta(hours=1)))
    by = {(d.user_id, d.channel): d for d in p.deliveries}
    assert set(by) == {(A, "realtime"), (A, "push"), (B, "push")}
    assert by[(A, "push")].priority == "urgent" and by[(A, "push")].available_at == NOW
    assert by[(B, "push")].priority == "normal" and by[(B, "push")].available_at == NOW + timedelta(hours=1)
    assert by[(A, "push")].payload["title"] == "Breaking: IVE"


def test_channel_switches() -> None:
    r = Recipient(A, channels={"push": {"like.received": False, "*": True}, "realtime": False})
    assert not channel_enabled(r, "push", "like.received") and channel_enabled(r, "push", "match.created")
    assert not channel_enabled(r, "realtime", "match.created")
    assert channel_enabled(Recipient(A), "push", "anything")


def test_the_batch_window_joins_an_open_batch_or_opens_one() -> None:
    w = Windows(batch=timedelta(seconds=60))
    r = users(A)
    r[A].open_batch = NOW + timedelta(seconds=20)
    p = plan([ev("like.received", {}, (A,))], r, Lookups(), NOW, w)
    assert [d.available_at for d in p.deliveries if d.channel == "push"] == [NOW + timedelta(seconds=20)]
    r[A].open_batch = None
    events = [ev("like.received", {}, (A,), n=i) for i in range(3)]
    p = plan(events, r, Lookups(), NOW, w)
    assert {d.available_at for d in p.deliveries if d.channel == "push"} == {NOW + timedelta(seconds=60)}
    assert all(d.available_at == NOW for d in p.deliveries if d.channel == "realtime")


@pytest.mark.parametrize(("start", "end", "tz", "at", "held_until"), [
    # 22:00-07:00 in Seoul (UTC+9): 12:00 UTC is 21:00 local -> not quiet
    (time(22), time(7), "Asia/Seoul", NOW, None),
    # 13:00 UTC is 22:00 local -> quiet until 07:00 local = 22:00 UTC
    (time(22), time(7), "Asia/Seoul", NOW + timedelta(hours=1), datetime(2026, 3, 10, 22, 0, tzinfo=timezone.utc)),
    # after midnight local (16:00 UTC = 01:00 local on the 11th) -> the same end
    (time(22), time(7), "Asia/Seoul", NOW + timedelta(hours=4), datetime(2026, 3, 10, 22, 0, tzinfo=timezone.utc)),
    # a daytime window in New York (UTC-4 in March after the DST change on the 8th): 08:00 local
    (time(7), time(9), "America/New_York", NOW, datetime(2026, 3, 10, 13, 0, tzinfo=timezone.utc)),
    (time(7), time(7), "UTC", NOW, None),  # an empty window
    (time(11), time(13), "Not/AZone", NOW, datetime(2026, 3, 10, 13, 0, tzinfo=timezone.utc)),  # unknown zone: UTC
])
def test_quiet_hours(start: time, end: time, tz: str, at: datetime, held_until: datetime | None) -> None:
    assert quiet_until(Recipient(A, quiet_start=start, quiet_end=end, timezone=tz), at) == held_until


def test_quiet_hours_hold_pushes_not_realtime() -> None:
    r = users(A, quiet_start=time(11), quiet_end=time(14), timezone="UTC")
    p = plan([ev("message.received", {"preview": "hey"}, (A,))], r, Lookups(), NOW)
    by = {d.channel: d for d in p.deliveries}
    assert by["realtime"].available_at == NOW
    assert by["push"].available_at == datetime(2026, 3, 10, 14, 0, tzinfo=timezone.utc)
    assert by["push"].payload["body"] == "hey"


def test_templates_never_fail() -> None:
    assert render("{artist_name}: {headline}", {"artist_name": "NewJeans"}) == "NewJeans: "
    assert render("{a.__class__}", {"a": "x"}) == "{a.__class__}"
    assert render("{x}", {"x": {"nested": 1}}) == ""
    assert len(render("{x}", {"x": "y" * 1000})) == 240


def test_database_webhooks_map_through_the_table() -> None:
    rec = {"id": "m1", "user_a": A, "user_b": B}
    assert table_event("public", "matches", "INSERT", rec, None) == ("match.created", {"match_id": "m1"}, [A, B])
    assert table_event("public", "matches", "DELETE", None, rec) is None
    media = {"id": "x", "owner_id": A, "bucket": "posts", "status": "stored"}
    assert table_event("public", "media_objects", "UPDATE", media, {**media, "status": "pending"})[0] == "upload.ready"
    assert table_event("public", "media_objects", "UPDATE", media, media) is None
    assert table_event("public", "media_objects", "INSERT", {**media, "status": "pending"}, None) is None
    assert table_event("auth", "users", "INSERT", {"id": A}, None) is None
