"""The sample builders (functions/webhooks/samples.py) make the providers' documented shapes:
each identifier where the provider puts it, and nothing our models would add."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from functions.webhooks import paystack, revenuecat
from functions.webhooks.samples import (
    PAYSTACK_KINDS,
    REVENUECAT_KINDS,
    PaystackIds,
    RevenueCatIds,
    lifecycle,
    paystack_event,
    paystack_signature,
    revenuecat_event,
)
from functions.webhooks.verify import paystack_signature_ok

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_paystack_lifecycle_puts_each_identifier_where_paystack_does() -> None:
    ids = PaystackIds.fresh(str(uuid.uuid4()))
    events = lifecycle("paystack", ids, now=NOW)
    assert [e["event"] for e in events] == ["charge.success", "subscription.create", "invoice.payment_failed",
                                            "invoice.update", "subscription.not_renew", "refund.processed",
                                            "subscription.disable"]
    charge, create, failed, paid, not_renew, refund, disable = (e["data"] for e in events)
    assert charge["reference"] == ids.first_reference and "subscription_code" not in charge
    assert charge["plan"]["plan_code"] == ids.plan_code and charge["metadata"]["user_id"] == ids.user_id
    for d in (create, not_renew, disable):
        assert d["subscription_code"] == ids.subscription_code and d["plan"]["plan_code"] == ids.plan_code
    for d in (failed, paid):
        assert d["subscription"]["subscription_code"] == ids.subscription_code and "plan" not in d
    assert failed["transaction"] == {} and paid["transaction"]["reference"] == ids.renewal_reference
    assert refund["transaction_reference"] == ids.renewal_reference and refund["amount"] == str(ids.amount)
    assert "customer_code" not in refund["customer"] and refund["customer"]["email"] == ids.email
    assert "updated_at" not in not_renew and "createdAt" not in disable  # no time of their own
    for e in events:
        assert paystack.parse(json.dumps(e).encode()).event_type == e["event"]


def test_revenuecat_lifecycle_and_transfer_shape() -> None:
    ids = RevenueCatIds.fresh(str(uuid.uuid4()), str(uuid.uuid4()))
    events = lifecycle("revenuecat", ids, now=NOW)
    kinds = [e["event"]["type"] for e in events]
    assert kinds == ["TEST", "INITIAL_PURCHASE", "PRODUCT_CHANGE", "RENEWAL", "CANCELLATION", "UNCANCELLATION",
                     "BILLING_ISSUE", "EXPIRATION", "TRANSFER"]
    times = [e["event"]["event_timestamp_ms"] for e in events]
    assert times == sorted(times) and len({e["event"]["id"] for e in events}) == len(events)
    transfer = events[-1]["event"]
    assert "app_user_id" not in transfer
    assert (transfer["transferred_from"], transfer["transferred_to"]) == ([ids.user_id], [ids.to_user_id])
    for e in events:
        assert revenuecat.parse(json.dumps(e).encode()).event_type == e["event"]["type"]


@pytest.mark.parametrize("kind", PAYSTACK_KINDS)
def test_every_paystack_kind_builds_and_signs(kind: str) -> None:
    body = json.dumps(paystack_event(kind, customer_code="CUS_x", email="a@example.com", plan_code="PLN_x",
                                     amount=5000, at=NOW, reference="T1")).encode()
    assert paystack_signature_ok("sk_test_x", body, paystack_signature(body, "sk_test_x"))
    assert paystack.parse(body).invalid is None


@pytest.mark.parametrize("kind", REVENUECAT_KINDS)
def test_every_revenuecat_kind_builds(kind: str) -> None:
    body = revenuecat_event(kind, app_user_id="u1", at=NOW, transferred_from=["a"], transferred_to=["b"])
    assert revenuecat.parse(json.dumps(body).encode()).invalid is None


def test_unknown_kinds_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="charge.success"):
        paystack_event("charge.refunded", customer_code="c", email="e", plan_code="p", amount=1, at=NOW)
    with pytest.raises(ValueError, match="INITIAL_PURCHASE"):
        revenuecat_event("REFUND", app_user_id="u", at=NOW)
