"""Who a payment belongs to (issue 16, items 5 and 6): the user per event, an owner that never
changes silently, and RevenueCat TRANSFERs whatever their arrival order."""

from __future__ import annotations

import uuid
from datetime import timedelta

from functions.webhooks.samples import paystack_event, revenuecat_event
from tests.factories import create_user
from tests.functions.webhooks.conftest import NOW, Hooks


async def test_two_users_sharing_one_customer_code_never_credit_each_other(hooks: Hooks, database_url: str) -> None:
    """Paystack keeps one customer per email: a second account paying with the same email
    gets the first one's customer code. The later payment names its own user: flagged with
    both ids, nothing granted to anyone, in either arrival order."""
    plan = await hooks.plan()
    for first_arrives in ("a", "b"):
        a, b = await create_user(database_url), await create_user(database_url)
        code, email = f"CUS_{uuid.uuid4().hex[:14]}", f"{uuid.uuid4().hex[:8]}@example.com"
        common = {"customer_code": code, "email": email, "plan_code": plan.plan_code, "amount": plan.amount}
        pay_a = paystack_event("charge.success", user_id=a, at=NOW - timedelta(days=2), **common)
        pay_b = paystack_event("charge.success", user_id=b, at=NOW - timedelta(days=1), **common)
        order = [pay_a, pay_b] if first_arrives == "a" else [pay_b, pay_a]
        acks = {id(ev): (await hooks.paystack(ev)).json()["data"] for ev in order}
        ack_b = await hooks.delivery(acks[id(pay_b)]["delivery_id"])
        assert ack_b["outcome"] == "flagged", first_arrives  # decided by the set, not by arrival
        assert a in ack_b["error"] and b in ack_b["error"] and "owner conflict" in ack_b["error"]
        assert (await hooks.delivery(acks[id(pay_a)]["delivery_id"]))["outcome"] == "applied"
        [sub] = await hooks.subscriptions(a)
        assert list(sub["metadata"]["charges"]) == [pay_a["data"]["reference"]]  # B's money extends nothing
        assert await hooks.subscriptions(b) == []
        assert (await hooks.tier(a), await hooks.tier(b)) == ("paid", "free")
        assert (await hooks.redis_tier(a), await hooks.redis_tier(b)) == ("paid", "free")


async def test_later_events_without_a_user_go_to_the_owner_not_the_email(hooks: Hooks, database_url: str) -> None:
    """metadata.user_id, then the subscription's owner, then the customer code, then the email:
    a notice naming only the customer (whose email is another account's) stays the owner's."""
    plan = await hooks.plan()
    owner = await create_user(database_url)
    other_email = f"{uuid.uuid4().hex[:8]}@example.com"
    await create_user(database_url, email=other_email)
    code, sub = f"CUS_{uuid.uuid4().hex[:14]}", f"SUB_{uuid.uuid4().hex[:14]}"
    common = {"customer_code": code, "email": other_email, "plan_code": plan.plan_code, "amount": plan.amount,
              "subscription_code": sub}
    # the notice first (it has only the email), the payment naming its user after
    assert (await hooks.paystack(paystack_event("subscription.not_renew", at=NOW, **common))).status_code == 200
    await hooks.paystack(paystack_event("charge.success", user_id=owner, at=NOW - timedelta(minutes=3), **common))
    await hooks.paystack(paystack_event("subscription.create", at=NOW - timedelta(minutes=2), **common))
    [row] = await hooks.subscriptions(owner)
    assert row["status"] == "non_renewing" and await hooks.tier(owner) == "paid"


async def test_a_transfer_before_the_purchase_waits_and_applies_when_it_arrives(hooks: Hooks, database_url: str) -> None:
    buyer, receiver = await create_user(database_url), await create_user(database_url)
    otx = f"{uuid.uuid4().int % 10**15:015d}"
    transfer = revenuecat_event("TRANSFER", app_user_id=None, at=NOW - timedelta(hours=1),
                                transferred_from=[buyer], transferred_to=[receiver])
    ack = (await hooks.revenuecat(transfer)).json()["data"]
    assert ack["outcome"] == "pending"
    purchase = revenuecat_event("INITIAL_PURCHASE", app_user_id=buyer, at=NOW - timedelta(hours=2),
                                original_transaction_id=otx, expires=NOW + timedelta(days=30))
    assert (await hooks.revenuecat(purchase)).json()["data"]["outcome"] == "applied"
    assert (await hooks.delivery(ack["delivery_id"]))["outcome"] == "applied"  # same transaction
    assert await hooks.subscriptions(buyer) == []
    [sub] = await hooks.subscriptions(receiver)
    assert sub["provider_ref"] == otx
    assert (await hooks.tier(buyer), await hooks.tier(receiver)) == ("free", "paid")
    assert (await hooks.redis_tier(receiver)) == "paid"
    # an event older than the TRANSFER, delivered after it, never moves the purchase back
    older = revenuecat_event("RENEWAL", app_user_id=buyer, at=NOW - timedelta(minutes=90),
                             original_transaction_id=otx, expires=NOW + timedelta(days=60))
    assert (await hooks.revenuecat(older)).json()["data"]["outcome"] == "applied"
    [sub] = await hooks.subscriptions(receiver)
    assert sub["current_period_end"] == NOW + timedelta(days=60)  # its period counts, for the receiver
    assert await hooks.subscriptions(buyer) == [] and await hooks.tier(buyer) == "free"


async def test_payments_naming_no_customer_each_keep_their_own_subscription(hooks: Hooks, database_url: str) -> None:
    """A charge without `data.customer` (Paystack sends one with every charge; a body that
    lacks it must still not mix payers): each payment is its own subscription, keyed by its
    reference, never one shared row that the second payer would conflict with."""
    from tests.functions.webhooks.conftest import charge

    plan = await hooks.plan()
    users = [await create_user(database_url) for _ in range(3)]
    for u in users:
        ev = charge(plan, user_id=u)
        ev["data"].pop("customer")
        ack = (await hooks.paystack(ev)).json()["data"]
        assert (await hooks.delivery(ack["delivery_id"]))["outcome"] == "applied", await hooks.delivery(ack["delivery_id"])
    for u in users:
        [sub] = await hooks.subscriptions(u)
        assert sub["status"] == "active" and sub["tier"] == "paid"
        assert (await hooks.tier(u), await hooks.redis_tier(u)) == ("paid", "paid")
    refs = [(await hooks.subscriptions(u))[0]["provider_ref"] for u in users]
    assert len(set(refs)) == 3 and all(r.startswith("charge:T") for r in refs), refs  # as keyed before 0021
