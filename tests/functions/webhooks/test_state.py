"""The pure parts: how a change applies to a subscription (ordering, idempotence), billing
intervals, and the constant-time checks. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from functions.webhooks.state import Fact, SubState, add_interval, order_key, snapshot_fact
from functions.webhooks.verify import ip_allowed, paystack_signature, paystack_signature_ok, revenuecat_auth_ok

T0 = datetime(2025, 1, 31, 12, tzinfo=UTC)


def test_the_order_is_total_and_timeless_events_sort_last() -> None:
    a = Fact(1, "a", "charge", T0, {})
    b = Fact(2, "b", "invoice_failed", T0, {})
    c = Fact(3, "c", "disable", None, {})
    d = Fact(4, "d", "not_renew", None, {})
    snap = snapshot_fact(5, "s", fetched_at=T0, status="active", period_end=T0 + timedelta(days=1))
    assert sorted([c, snap, a, d, b], key=order_key) == [b, a, snap, d, c]
    assert sorted([d, c], key=order_key) == [d, c]


def test_a_fact_round_trips_through_json() -> None:
    f = Fact(7, "k", "charge", T0, {"ref": "T1", "amount": 5})
    assert Fact.from_json(7, "k", f.to_json()) == f


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
