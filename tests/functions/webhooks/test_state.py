"""The pure parts: how a change applies to a subscription (ordering, idempotence), billing
intervals, and the constant-time checks. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from functions.webhooks.state import Change, SubState, add_interval, reduce
from functions.webhooks.verify import ip_allowed, paystack_signature, paystack_signature_ok, revenuecat_auth_ok

T0 = datetime(2025, 1, 31, 12, tzinfo=UTC)


def test_newer_events_apply_older_ones_are_stale() -> None:
    s = SubState()
    renewal = Change(T0 + timedelta(hours=2), status="active", tier="paid", period_end=T0 + timedelta(days=30))
    late_cancel = Change(T0 + timedelta(hours=1), status="cancelled", period_end=T0 + timedelta(days=1))
    t = reduce(s, renewal)
    assert (t.after.status, t.after.current_period_end, t.after.last_event_at) == ("active", T0 + timedelta(days=30), renewal.event_at)
    late = reduce(t.after, late_cancel)
    assert late.stale and late.after == t.after and not late.changed
    # the same event twice: the same state (an event is not stale against itself)
    again = reduce(t.after, renewal)
    assert not again.stale and again.after == t.after


def test_extend_to_only_moves_the_end_later_in_any_order() -> None:
    a = Change(T0, period_end=T0 + timedelta(days=30), period_rule="extend_to")
    b = Change(T0 - timedelta(days=1), period_end=T0 + timedelta(days=60), period_rule="extend_to")
    ab = reduce(reduce(SubState(), a).after, b).after
    ba = reduce(reduce(SubState(), b).after, a).after
    assert ab.current_period_end == ba.current_period_end == T0 + timedelta(days=60)


def test_force_applies_even_when_older() -> None:
    s = reduce(SubState(), Change(T0, status="active", period_end=T0 + timedelta(days=30))).after
    t = reduce(s, Change(T0 - timedelta(hours=1), status="expired", status_rule="force",
                         period_end=T0, period_rule="force"))
    assert not t.stale and (t.after.status, t.after.current_period_end) == ("expired", T0)
    assert t.after.last_event_at == T0


def test_stale_ordered_changes_do_not_touch_metadata() -> None:
    s = reduce(SubState(), Change(T0, status="active", metadata={"k": 1})).after
    t = reduce(s, Change(T0 - timedelta(seconds=1), status="cancelled", metadata={"k": 2}))
    assert t.after.metadata == {"k": 1}


def test_grants_needs_a_granting_status_and_a_future_end() -> None:
    now = T0
    assert SubState("active", "paid", current_period_end=now + timedelta(seconds=1)).grants(now)
    assert SubState("cancelled", "paid", current_period_end=now + timedelta(days=1)).grants(now)
    assert not SubState("active", "paid", current_period_end=None).grants(now)
    assert not SubState("expired", "paid", current_period_end=now + timedelta(days=1)).grants(now)
    assert not SubState("pending", "paid", current_period_end=now + timedelta(days=1)).grants(now)


@pytest.mark.parametrize(("start", "interval", "end"), [
    (datetime(2025, 1, 31, tzinfo=UTC), "monthly", datetime(2025, 2, 28, tzinfo=UTC)),
    (datetime(2024, 1, 31, tzinfo=UTC), "monthly", datetime(2024, 2, 29, tzinfo=UTC)),
    (datetime(2025, 12, 15, tzinfo=UTC), "monthly", datetime(2026, 1, 15, tzinfo=UTC)),
    (datetime(2024, 2, 29, tzinfo=UTC), "yearly", datetime(2025, 2, 28, tzinfo=UTC)),
    (datetime(2025, 3, 1, tzinfo=UTC), "weekly", datetime(2025, 3, 8, tzinfo=UTC)),
    (datetime(2025, 3, 1, tzinfo=UTC), "quarterly", datetime(2025, 6, 1, tzinfo=UTC)),
])
def test_add_interval_by_the_calendar(start: datetime, interval: str, end: datetime) -> None:
    assert add_interval(start, interval) == end


def test_unknown_interval_is_an_error() -> None:
    with pytest.raises(ValueError):
        add_interval(T0, "fortnightly")


def test_paystack_signature() -> None:
    body = b'{"event":"charge.success","data":{}}'
    good = paystack_signature("sk_test_x", body)
    assert len(good) == 128
    assert paystack_signature_ok("sk_test_x", body, good)
    assert paystack_signature_ok("sk_test_x", body, " " + good.upper() + " ")
    for bad in (None, "", good[:-1], good + "0", paystack_signature("sk_test_y", body), "é" * 128):
        assert not paystack_signature_ok("sk_test_x", body, bad)
    assert not paystack_signature_ok("sk_test_x", body + b" ", good)


def test_revenuecat_authorization() -> None:
    assert revenuecat_auth_ok("Bearer abc", "Bearer abc")
    for bad in (None, "", "Bearer ab", "Bearer abcd", "bearer abc", "Bearer abc ", "ü"):
        assert not revenuecat_auth_ok("Bearer abc", bad)


def test_ip_allow_list() -> None:
    allow = ("52.31.139.75", "52.214.14.0/24", "2001:db8::/32")
    assert ip_allowed("52.31.139.75", allow) and ip_allowed("52.214.14.220", allow)
    assert ip_allowed("::ffff:52.31.139.75", allow) and ip_allowed("2001:db8::1", allow)
    assert not ip_allowed("52.31.139.76", allow) and not ip_allowed("unknown", allow) and not ip_allowed("", allow)
    assert ip_allowed("203.0.113.1", ())  # no list: off


def test_a_malformed_allow_list_fails_at_load_naming_the_key() -> None:
    from functions.webhooks.settings import WebhooksSettings
    from shared.settings import ConfigError

    with pytest.raises(ConfigError, match="PAYSTACK_ALLOWED_IPS"):
        WebhooksSettings.load(env={"PAYSTACK_ALLOWED_IPS": "52.31.139.75,not-an-ip"})
