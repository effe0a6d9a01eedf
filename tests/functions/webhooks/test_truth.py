"""The provider's truth (functions/webhooks/truth.py): with PAYSTACK_VERIFY / REVENUECAT_VERIFY
the provider's answer is applied, not the body, read over real HTTP from a local stand-in
(tests/providers.py) that says something different from the webhook; while the provider is
down the body is applied, and reconciliation later applies the provider's answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from functions.webhooks.samples import paystack_event, revenuecat_event
from tests.factories import create_user
from tests.functions.webhooks import conftest as wh
from tests.functions.webhooks.conftest import NOW, PAYSTACK_SECRET, Hooks
from tests.functions.webhooks.test_cli import cli
from tests.providers import ProviderAPI, paystack_subscription, paystack_transaction

RC_KEY = "sk_rc_" + "ab" * 12


@pytest.fixture
def api() -> Iterator[ProviderAPI]:
    server = ProviderAPI(paystack_key=PAYSTACK_SECRET, revenuecat_key=RC_KEY).start()
    yield server
    server.stop()


def verifying(make_hooks: Any, api: ProviderAPI, **extra: Any) -> Hooks:
    hooks: Hooks = make_hooks(paystack_verify=True, paystack_api_url=api.url, revenuecat_verify=True,
                              revenuecat_api_key=RC_KEY, revenuecat_api_url=api.url, **extra)
    return hooks


class Customer:
    """One Paystack customer of `plan`, its bodies built from Paystack's documented shapes."""

    def __init__(self, user: str, plan: wh.TestPlan) -> None:
        self.user, self.plan = user, plan
        self.customer_code, self.sub_code = f"CUS_{uuid.uuid4().hex[:14]}", f"SUB_{uuid.uuid4().hex[:14]}"
        self.reference = f"T{uuid.uuid4().hex[:15]}"

    def event(self, kind: str, **kw: Any) -> dict[str, Any]:
        at = kw.pop("at", NOW - timedelta(minutes=5))
        return paystack_event(kind, customer_code=self.customer_code, email=f"{self.user}@example.com",
                              plan_code=self.plan.plan_code, amount=self.plan.amount, at=at,
                              subscription_code=self.sub_code, user_id=self.user, reference=self.reference, **kw)

    def provider_says(self, api: ProviderAPI, *, status: str, next_payment: Any, paid: str = "success") -> None:
        api.transactions[self.reference] = paystack_transaction(
            self.reference, status=paid, amount=self.plan.amount, plan_code=self.plan.plan_code,
            customer_code=self.customer_code)
        api.subscriptions[self.sub_code] = paystack_subscription(
            self.sub_code, status=status, plan_code=self.plan.plan_code, amount=self.plan.amount,
            next_payment=next_payment, customer_code=self.customer_code)


async def sub_row(hooks: Hooks, user: str) -> dict[str, Any]:
    [row] = await hooks.subscriptions(user)
    return row


async def test_paystack_applies_paystacks_answer_not_the_body(make_hooks: Any, api: ProviderAPI,
                                                              database_url: str) -> None:
    hooks = verifying(make_hooks, api)
    plan = await hooks.plan()
    user = await create_user(database_url)
    c = Customer(user, plan)
    truth_end = NOW + timedelta(days=29)
    c.provider_says(api, status="active", next_payment=truth_end)
    for kind in ("charge.success", "subscription.create"):
        assert (await hooks.paystack(c.event(kind))).json()["data"]["outcome"] == "applied"
    # the body says the customer turned renewal off; Paystack says the subscription is active
    r = await hooks.paystack(c.event("subscription.not_renew"))
    assert r.json()["data"]["outcome"] == "applied"
    row = await sub_row(hooks, user)
    assert row["status"] == "active" and row["current_period_end"] == truth_end
    assert row["metadata"]["paystack_status"] == "active"
    assert api.requests == [
        {"path": f"/transaction/verify/{c.reference}", "authorization": f"Bearer {PAYSTACK_SECRET}"},
        {"path": f"/subscription/{c.sub_code}", "authorization": f"Bearer {PAYSTACK_SECRET}"},
        {"path": f"/subscription/{c.sub_code}", "authorization": f"Bearer {PAYSTACK_SECRET}"},
    ]
    # and when Paystack says it is cancelled, whatever the body says, it is
    api.subscriptions[c.sub_code]["status"] = "cancelled"
    await hooks.paystack(c.event("invoice.payment_failed", at=NOW - timedelta(minutes=1)))
    row = await sub_row(hooks, user)
    assert row["status"] == "cancelled" and row["current_period_end"] == truth_end
    assert await hooks.tier(user) == "paid"  # cancelled: access to the end of the paid period


async def test_paystack_a_charge_paystack_does_not_call_successful_grants_nothing(
    make_hooks: Any, api: ProviderAPI, database_url: str,
) -> None:
    hooks = verifying(make_hooks, api)
    plan = await hooks.plan()
    user = await create_user(database_url)
    c = Customer(user, plan)
    c.provider_says(api, status="active", next_payment=NOW + timedelta(days=30), paid="failed")
    ack = (await hooks.paystack(c.event("charge.success"))).json()["data"]
    assert ack["outcome"] == "flagged"
    assert "is 'failed'" in (await hooks.delivery(ack["delivery_id"]))["error"]
    assert await hooks.tier(user) in (None, "free") and await hooks.subscriptions(user) == []


async def test_revenuecat_applies_the_subscribers_answer(make_hooks: Any, api: ProviderAPI, database_url: str) -> None:
    hooks = verifying(make_hooks, api)
    user = await create_user(database_url)
    truth = NOW + timedelta(days=30)
    api.subscribers[user] = {"original_app_user_id": user, "subscriptions": {"com.example.pro.monthly": {
        "expires_date": truth.strftime("%Y-%m-%dT%H:%M:%SZ"), "unsubscribe_detected_at": "2026-01-01T00:00:00Z",
        "billing_issues_detected_at": None}}}
    body = revenuecat_event("INITIAL_PURCHASE", app_user_id=user, at=NOW, expires=NOW + timedelta(days=7))
    assert (await hooks.revenuecat(body)).json()["data"]["outcome"] == "applied"
    row = await sub_row(hooks, user)
    assert row["status"] == "cancelled" and row["current_period_end"] == truth  # not the body's active, +7 d
    assert api.paths() == [f"/v1/subscribers/{user}"]


async def test_provider_down_applies_the_body_then_reconciliation_applies_the_provider(
    make_hooks: Any, api: ProviderAPI, database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both providers: down -> the body's state (answered at once once the breaker is open) ->
    provider back -> `edgefn webhooks replay --pending` -> the provider's state."""
    hooks = verifying(make_hooks, api, breaker_failure_threshold=2, breaker_reset_seconds=600)
    plan = await hooks.plan()
    ps_user, rc_user = await create_user(database_url), await create_user(database_url)
    c = Customer(ps_user, plan)
    api.down = True

    acks = [(await hooks.paystack(c.event(kind))).json()["data"] for kind in ("charge.success", "subscription.create")]
    body = revenuecat_event("INITIAL_PURCHASE", app_user_id=rc_user, at=NOW, expires=NOW + timedelta(days=7))
    acks.append((await hooks.revenuecat(body)).json()["data"])
    assert [a["outcome"] for a in acks] == ["applied"] * 3  # from the body: nothing waits for the provider
    # two failures opened Paystack's breaker; RevenueCat's is its own (one failure)
    assert api.paths() == [f"/transaction/verify/{c.reference}", f"/subscription/{c.sub_code}",
                           f"/v1/subscribers/{rc_user}"]
    started = time.perf_counter()
    assert (await hooks.paystack(c.event("subscription.not_renew"))).json()["data"]["outcome"] == "applied"
    assert time.perf_counter() - started < 0.5 and len(api.requests) == 3  # failed at once, nothing sent
    ps, rc = await sub_row(hooks, ps_user), await sub_row(hooks, rc_user)
    assert (ps["status"], rc["status"]) == ("non_renewing", "active")
    assert rc["current_period_end"] == NOW + timedelta(days=7)
    queued = await hooks.rows("select delivery_id, provider, last_error from public.webhook_verify_pending "
                              "where delivery_id = any(%s)", ([a["delivery_id"] for a in acks],))
    assert len(queued) == 3 and all(q["last_error"] for q in queued)

    # the provider is back, and says something else than the bodies did
    api.down = False
    ps_truth, rc_truth = NOW + timedelta(days=27), NOW + timedelta(days=31)
    c.provider_says(api, status="active", next_payment=ps_truth)
    api.subscribers[rc_user] = {"original_app_user_id": rc_user, "subscriptions": {"com.example.pro.monthly": {
        "expires_date": rc_truth.strftime("%Y-%m-%dT%H:%M:%SZ"), "billing_issues_detected_at": "2026-01-01T00:00:00Z",
        "unsubscribe_detected_at": None}}}
    monkeypatch.setenv("PAYSTACK_SECRET_KEY", PAYSTACK_SECRET)
    monkeypatch.setenv("PAYSTACK_VERIFY", "1")
    monkeypatch.setenv("PAYSTACK_API_URL", api.url)
    monkeypatch.setenv("REVENUECAT_VERIFY", "1")
    monkeypatch.setenv("REVENUECAT_API_KEY", RC_KEY)
    monkeypatch.setenv("REVENUECAT_API_URL", api.url)
    assert await cli(monkeypatch, redis_url, "replay", "--pending", "--database-url", database_url) == 0
    ps, rc = await sub_row(hooks, ps_user), await sub_row(hooks, rc_user)
    assert (ps["status"], ps["current_period_end"]) == ("active", ps_truth)
    assert (rc["status"], rc["current_period_end"]) == ("past_due", rc_truth)
    assert await hooks.rows("select 1 from public.webhook_verify_pending where delivery_id = any(%s)",
                            ([a["delivery_id"] for a in acks],)) == []
    assert await hooks.tier(ps_user) == "paid" and await hooks.tier(rc_user) == "paid"


async def test_a_slow_provider_is_cut_at_its_deadline_and_the_body_applies(
    make_hooks: Any, api: ProviderAPI, database_url: str,
) -> None:
    from functions.webhooks.reconcile import reconcile

    hooks = verifying(make_hooks, api, revenuecat_api_timeout_s=0.2)
    user = await create_user(database_url)
    api.delay = 1.5
    started = time.perf_counter()
    r = await hooks.revenuecat(revenuecat_event("INITIAL_PURCHASE", app_user_id=user, at=NOW,
                                                expires=NOW + timedelta(days=7)))
    assert r.status_code == 200 and time.perf_counter() - started < 1.0
    ack = r.json()["data"]
    assert ack["outcome"] == "applied" and await hooks.tier(user) == "paid"
    [queued] = await hooks.rows("select last_error from public.webhook_verify_pending where delivery_id = %s",
                                (ack["delivery_id"],))
    assert "UPSTREAM_TIMEOUT" in queued["last_error"]
    api.delay = 0.0
    api.subscribers[user] = {"subscriptions": {"com.example.pro.monthly": {
        "expires_date": (NOW - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}}}
    await asyncio.sleep(0)
    report = await reconcile(hooks.services)
    assert report["verified"] >= 1
    assert (await sub_row(hooks, user))["status"] == "expired" and await hooks.tier(user) == "free"


async def test_revenuecat_after_a_product_change_the_answer_for_the_current_product_counts(
        make_hooks: Any, api: ProviderAPI, database_url: str) -> None:
    """RevenueCat's subscriber lists each product of a purchase on its own: after a
    PRODUCT_CHANGE the old product expires when the new one starts. An older event of the
    purchase (the old product's id) read back late must not end the subscription: the
    answer is read for every product the purchase's events name, the current one counts."""
    hooks = verifying(make_hooks, api)
    old, new = "com.example.basic.monthly", "com.example.pro.monthly"
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    for late in ("INITIAL_PURCHASE", "PRODUCT_CHANGE"):
        user = await create_user(database_url)
        otx = f"{uuid.uuid4().int % 10**15:015d}"
        truth = NOW + timedelta(days=20)
        api.subscribers[user] = {"original_app_user_id": user, "subscriptions": {
            old: {"expires_date": (NOW - timedelta(days=10)).strftime(fmt), "unsubscribe_detected_at": None,
                  "billing_issues_detected_at": None},
            new: {"expires_date": truth.strftime(fmt), "unsubscribe_detected_at": None,
                  "billing_issues_detected_at": None}}}
        events = {
            "INITIAL_PURCHASE": revenuecat_event("INITIAL_PURCHASE", app_user_id=user, at=NOW - timedelta(days=40),
                                                 product_id=old, original_transaction_id=otx),
            "PRODUCT_CHANGE": revenuecat_event("PRODUCT_CHANGE", app_user_id=user, at=NOW - timedelta(days=35),
                                               product_id=old, new_product_id=new, original_transaction_id=otx),
            "RENEWAL": revenuecat_event("RENEWAL", app_user_id=user, at=NOW - timedelta(days=10), product_id=new,
                                        original_transaction_id=otx, expires=truth),
        }
        for kind in [k for k in events if k != late] + [late]:  # one old-product event read back last
            assert (await hooks.revenuecat(events[kind])).json()["data"]["outcome"] == "applied", kind
        row = await sub_row(hooks, user)
        assert (row["status"], row["current_period_end"]) == ("active", truth), (late, row)
        assert await hooks.tier(user) == "paid"


def test_revenuecat_snapshots_stored_before_products_were_kept_still_fold() -> None:
    from functions.webhooks.revenuecat import _current

    old_format = {"at": "2026-12-01T00:00:00+00:00", "status": "cancelled", "period_end": "2026-12-20T00:00:00+00:00"}
    assert _current(old_format, {"com.example.pro.monthly"}) is old_format
    per_product = {"at": "2026-12-01T00:00:00+00:00", "products": {
        "a": {"status": "expired", "period_end": "2026-11-01T00:00:00+00:00"},
        "b": {"status": "active", "period_end": "2026-12-30T00:00:00+00:00"},
        "lifetime": {"status": "active", "period_end": None},
        "other": {"status": "active", "period_end": "2027-06-01T00:00:00+00:00"}}}
    assert _current(per_product, {"a", "b"}) == per_product["products"]["b"]  # the longest of its own
    assert _current(per_product, {"a"}) == per_product["products"]["a"]
    assert _current(per_product, {"a", "lifetime"}) == per_product["products"]["lifetime"]
    assert _current(per_product, {"unknown"}) is None  # says nothing about this purchase


def test_revenuecat_snapshot_keeps_the_events_products_first() -> None:
    from datetime import UTC, datetime

    from functions.webhooks.revenuecat import MAX_SNAPSHOT_PRODUCTS, snapshot

    subs = {f"p{i:03d}": {"expires_date": "2027-01-01T00:00:00Z"} for i in range(MAX_SNAPSHOT_PRODUCTS + 10)}
    snap = snapshot({"subscriber": {"subscriptions": subs}}, datetime(2026, 12, 6, tzinfo=UTC),
                    (f"p{MAX_SNAPSHOT_PRODUCTS + 5:03d}",))
    assert snap is not None and len(snap["products"]) == MAX_SNAPSHOT_PRODUCTS
    assert f"p{MAX_SNAPSHOT_PRODUCTS + 5:03d}" in snap["products"]
