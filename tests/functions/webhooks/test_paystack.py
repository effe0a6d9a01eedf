"""POST /webhooks/paystack: signature, exactly-once storage, price checks, the subscription
lifecycle, refunds, unknown users and the IP allow-list."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from functions.webhooks.state import add_interval
from tests.factories import create_user
from tests.functions.webhooks.conftest import (
    NOW,
    PAYSTACK_PATH,
    Hooks,
    charge,
    encode,
    invoice,
    sign,
    subscription_event,
)
from tests.conftest import load_event


async def test_charge_success_grants_the_plan_everywhere(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan()
    ev = charge(plan, user_id=user)
    body = encode(ev)
    r = await hooks.paystack(body)
    assert r.status_code == 200, r.text
    ack = r.json()["data"]
    assert ack["outcome"] == "applied" and ack["duplicate"] is False
    assert r.headers["cache-control"] == "private, no-store"
    assert "ratelimit-limit" not in r.headers  # providers are never rate limited

    [sub] = await hooks.subscriptions(user)
    paid_at = NOW - timedelta(minutes=1)
    assert (sub["status"], sub["tier"], sub["plan_code"]) == ("active", "paid", plan.code)
    assert sub["current_period_end"] == add_interval(paid_at, "monthly")
    assert await hooks.tier(user) == "paid"
    assert await hooks.redis_tier(user) == "paid"
    [event] = await hooks.events(user)
    assert event["payload"]["user_id"] == user and event["payload"]["tier"] == "paid"
    assert event["payload"]["previous_tier"] == "free" and event["payload"]["status"] == "active"

    stored = await hooks.delivery(ack["delivery_id"])
    assert bytes(stored["body"]) == body  # byte for byte: re-verifiable and replayable
    assert stored["dedupe_key"] == f"charge.success:{ev['data']['reference']}"
    assert stored["headers"]["x-paystack-signature"] == sign(body)
    assert stored["user_id"] is not None and str(stored["user_id"]) == user
    assert str(stored["subscription_id"]) == str(sub["id"]) and stored["processed_at"] is not None


async def test_bad_or_missing_signature_is_401_and_writes_nothing(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan()
    ev = charge(plan, user_id=user)
    key = f"charge.success:{ev['data']['reference']}"
    good = sign(encode(ev))
    one_char_off = good[:-1] + ("1" if good[-1] == "0" else "0")  # always differs from the real one
    for signature in ("", "0" * 128, sign(encode(ev), "sk_test_other"), one_char_off):
        r = await hooks.paystack(ev, signature=signature)
        assert r.status_code == 401 and r.json()["error"]["code"] == "INVALID_SIGNATURE"
    r = await hooks.paystack(ev, headers={"x-paystack-signature": None})  # type: ignore[dict-item]
    assert r.status_code == 401
    # the body signed, then altered: the amount changed in flight
    body = encode(ev)
    tampered = body.replace(b'"amount": 200000', b'"amount": 100')
    r = await hooks.client.post(PAYSTACK_PATH, content=tampered, headers={"x-paystack-signature": sign(body)})
    assert r.status_code == 401
    assert await hooks.deliveries("paystack", key) == []
    assert await hooks.subscriptions(user) == [] and await hooks.tier(user) == "free"


async def test_a_replay_is_a_no_op_and_never_extends_the_period(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan()
    body = encode(charge(plan, user_id=user))
    first = (await hooks.paystack(body)).json()["data"]
    [before] = await hooks.subscriptions(user)
    for _ in range(3):
        again = (await hooks.paystack(body)).json()["data"]
        assert again == {**first, "duplicate": True, "received": True}
    [after] = await hooks.subscriptions(user)
    assert after["current_period_end"] == before["current_period_end"]
    assert len(await hooks.events(user)) == 1


async def test_wrong_amount_or_currency_is_flagged_never_granted(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan(amount=200000)
    yearly = await hooks.plan(amount=2000000, interval="yearly")
    cases = [
        charge(plan, user_id=user, amount=100),  # underpaid
        charge(plan, user_id=user, currency="USD"),  # same number, other money
        # the client names the yearly plan in metadata but pays the monthly price
        charge(yearly, user_id=user, amount=plan.amount, paystack_plan=False),
        # a plan the client made up
        charge(plan, user_id=user, paystack_plan=False, metadata_plan="platinum_forever"),
    ]
    for ev in cases:
        r = await hooks.paystack(ev)
        assert r.status_code == 200
        ack = r.json()["data"]
        assert ack["outcome"] == "flagged", ev["data"]["reference"]
        stored = await hooks.delivery(ack["delivery_id"])
        assert "nothing granted" in stored["error"]
    assert await hooks.tier(user) == "free"
    assert await hooks.redis_tier(user) in (None, "free")
    assert await hooks.subscriptions(user) == []
    assert await hooks.events(user) == []


async def test_checkout_plan_without_a_paystack_plan_is_granted_when_the_price_matches(
    hooks: Hooks, database_url: str,
) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan(amount=2000000, interval="yearly")
    r = await hooks.paystack(charge(plan, user_id=user, paystack_plan=False))
    assert r.json()["data"]["outcome"] == "applied"
    [sub] = await hooks.subscriptions(user)
    assert sub["current_period_end"] == add_interval(NOW - timedelta(minutes=1), "yearly")


async def test_paying_early_extends_from_the_current_end(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan()
    code = f"CUS_{uuid.uuid4().hex[:12]}"
    await hooks.paystack(charge(plan, user_id=user, customer_code=code))
    await hooks.paystack(charge(plan, user_id=user, customer_code=code, paid_at=NOW))
    [sub] = await hooks.subscriptions(user)
    first_end = add_interval(NOW - timedelta(minutes=1), "monthly")
    assert sub["current_period_end"] == add_interval(first_end, "monthly")
    assert len(sub["metadata"]["charges"]) == 2


async def test_subscription_lifecycle(hooks: Hooks, database_url: str) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    user = await create_user(database_url, email=email)
    plan = await hooks.plan()
    code, sub_code = f"CUS_{uuid.uuid4().hex[:12]}", f"SUB_{uuid.uuid4().hex[:12]}"
    # the first charge names the user; every later event only the customer
    assert (await hooks.paystack(charge(plan, user_id=user, customer_code=code)))
    created = subscription_event("subscription.create", "paystack_subscription_create.json", plan,
                                 customer_code=code, subscription_code=sub_code, status="active")
    assert (await hooks.paystack(created)).json()["data"]["outcome"] == "applied"
    [sub] = await hooks.subscriptions(user)
    assert sub["metadata"]["subscription_code"] == sub_code and sub["status"] == "active"
    first_end = sub["current_period_end"]

    r = await hooks.paystack(invoice("invoice.create", plan, customer_code=code, subscription_code=sub_code, paid=False))
    assert r.json()["data"]["outcome"] == "applied"
    renewal_end = first_end + timedelta(days=31)
    paid = invoice("invoice.update", plan, customer_code=code, subscription_code=sub_code, paid=True,
                   next_payment=renewal_end)
    assert (await hooks.paystack(paid)).json()["data"]["outcome"] == "applied"
    [sub] = await hooks.subscriptions(user)
    assert sub["status"] == "active" and sub["current_period_end"] == renewal_end

    failed = invoice("invoice.payment_failed", plan, customer_code=code, subscription_code=sub_code, paid=False,
                     status="failed")
    assert (await hooks.paystack(failed)).json()["data"]["outcome"] == "applied"
    [sub] = await hooks.subscriptions(user)
    assert sub["status"] == "past_due" and await hooks.tier(user) == "paid"  # the paid period still runs

    not_renew = subscription_event("subscription.not_renew", "paystack_subscription_not_renew.json", plan,
                                   customer_code=code, subscription_code=sub_code, status="non-renewing")
    assert (await hooks.paystack(not_renew)).json()["data"]["outcome"] == "applied"
    assert (await hooks.paystack(not_renew)).json()["data"]["duplicate"] is True  # Paystack's retry
    assert (await hooks.subscriptions(user))[0]["status"] == "non_renewing"
    disable = subscription_event("subscription.disable", "paystack_subscription_not_renew.json", plan,
                                 customer_code=code, subscription_code=sub_code, status="complete")
    assert (await hooks.paystack(disable)).json()["data"]["outcome"] == "applied"
    [sub] = await hooks.subscriptions(user)
    assert sub["status"] == "cancelled" and sub["current_period_end"] == renewal_end
    assert await hooks.tier(user) == "paid"  # cancelled, but paid up to the period end


async def test_renewal_invoice_with_the_wrong_amount_is_flagged(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan()
    code, sub_code = f"CUS_{uuid.uuid4().hex[:12]}", f"SUB_{uuid.uuid4().hex[:12]}"
    await hooks.paystack(charge(plan, user_id=user, customer_code=code))
    await hooks.paystack(subscription_event("subscription.create", "paystack_subscription_create.json", plan,
                                            customer_code=code, subscription_code=sub_code, status="active"))
    [before] = await hooks.subscriptions(user)
    cheap = invoice("invoice.update", plan, customer_code=code, subscription_code=sub_code, paid=True, amount=5000,
                    next_payment=NOW + timedelta(days=400))
    assert (await hooks.paystack(cheap)).json()["data"]["outcome"] == "flagged"
    [after] = await hooks.subscriptions(user)
    assert after["current_period_end"] == before["current_period_end"]


async def test_full_refund_takes_the_period_back_once(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan()
    ev = charge(plan, user_id=user)
    await hooks.paystack(ev)
    assert await hooks.tier(user) == "paid"
    refund = load_event("webhooks/paystack_refund_processed.json")
    refund["data"].update(transaction_reference=ev["data"]["reference"], refund_reference=f"RFD_{uuid.uuid4().hex[:10]}")
    r = await hooks.paystack(refund)
    assert r.json()["data"]["outcome"] == "applied"
    [sub] = await hooks.subscriptions(user)
    assert sub["status"] == "expired" and sub["current_period_end"] <= NOW
    assert await hooks.tier(user) == "free" and await hooks.redis_tier(user) == "free"
    # one waiting subscription.changed per user: the state now (the paid one was replaced)
    [event] = await hooks.events(user)
    assert (event["payload"]["tier"], event["payload"]["status"]) == ("free", "expired")
    charge_row = sub["metadata"]["charges"][ev["data"]["reference"]]
    assert charge_row["refunded"] is True and list(charge_row["refunds"].values()) == [200000]


async def test_partial_refund_is_recorded_and_access_kept(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan()
    ev = charge(plan, user_id=user)
    await hooks.paystack(ev)
    refund = load_event("webhooks/paystack_refund_processed.json")
    refund["data"].update(transaction_reference=ev["data"]["reference"], amount="50000",
                          refund_reference=f"RFD_{uuid.uuid4().hex[:10]}")
    ack = (await hooks.paystack(refund)).json()["data"]
    assert ack["outcome"] == "applied"
    assert "partial refund (50000 of 200000)" in (await hooks.delivery(ack["delivery_id"]))["error"]
    assert await hooks.tier(user) == "paid"
    [sub] = await hooks.subscriptions(user)
    entry = sub["metadata"]["charges"][ev["data"]["reference"]]
    assert entry["refunds"] == {refund["data"]["refund_reference"]: 50000} and entry["refunded"] is False


async def test_unknown_user_is_pending_and_answered_200(hooks: Hooks, database_url: str) -> None:
    from functions.webhooks.reconcile import reconcile

    user = str(uuid.uuid4())  # paid before the account row exists (or a typo in metadata)
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    plan = await hooks.plan()
    r = await hooks.paystack(charge(plan, user_id=user, email=email))
    assert r.status_code == 200
    ack = r.json()["data"]
    assert ack["outcome"] == "pending"
    stored = await hooks.delivery(ack["delivery_id"])
    assert stored["subject"] == email and "unknown user" in stored["error"]

    await create_user(database_url, user_id=user, email=email)
    report = await reconcile(hooks.services)
    assert report["outcomes"].get("applied", 0) >= 1
    assert (await hooks.delivery(ack["delivery_id"]))["outcome"] == "applied"
    assert await hooks.tier(user) == "paid" and await hooks.redis_tier(user) == "paid"


async def test_user_found_by_email_when_metadata_names_nobody(hooks: Hooks, database_url: str) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    user = await create_user(database_url, email=email)
    plan = await hooks.plan()
    r = await hooks.paystack(charge(plan, email=email.upper()))
    assert r.json()["data"]["outcome"] == "applied"
    assert await hooks.tier(user) == "paid"


async def test_refund_before_its_charge_waits_and_applies_when_the_charge_arrives(
    hooks: Hooks, database_url: str,
) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan()
    ev = charge(plan, user_id=user)
    refund = load_event("webhooks/paystack_refund_processed.json")
    refund["data"].update(transaction_reference=ev["data"]["reference"], refund_reference=f"RFD_{uuid.uuid4().hex[:10]}")
    ack = (await hooks.paystack(refund)).json()["data"]
    assert ack["outcome"] == "pending"
    assert (await hooks.paystack(ev)).json()["data"]["outcome"] == "applied"
    # in the charge's own transaction: no reconciliation, no replay
    assert (await hooks.delivery(ack["delivery_id"]))["outcome"] == "applied"
    assert await hooks.tier(user) == "free" and await hooks.redis_tier(user) == "free"


async def test_other_events_are_recorded_and_acknowledged(hooks: Hooks) -> None:
    for body in (
        {"event": "transfer.success", "data": {"id": 5, "reference": f"TRF_{uuid.uuid4().hex[:8]}", "amount": 100}},
        {"event": "customeridentification.success", "data": {"customer_code": "CUS_x", "unknown": {"nested": [1]}}},
    ):
        r = await hooks.paystack(body)
        assert r.status_code == 200 and r.json()["data"]["outcome"] == "ignored"
    # correctly signed but not an event: stored (for a human) and acknowledged
    for raw in (b"not json at all", json.dumps({"data": {}}).encode()):
        r = await hooks.paystack(raw)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["outcome"] == "invalid"


async def test_ip_allow_list_reads_the_trusted_client_address(make_hooks: object, database_url: str) -> None:
    hooks = make_hooks(paystack_allowed_ips="52.31.139.75,52.49.173.169,52.214.14.0/24",  # type: ignore[operator]
                       trusted_proxy_header="x-forwarded-for")
    user = await create_user(database_url)
    plan = await hooks.plan()
    ev = charge(plan, user_id=user)
    r = await hooks.paystack(ev, headers={"x-forwarded-for": "203.0.113.9"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "IP_NOT_ALLOWED"
    r = await hooks.paystack(ev)  # no header: the socket peer, which is not Paystack
    assert r.status_code == 403
    assert await hooks.deliveries("paystack", f"charge.success:{ev['data']['reference']}") == []
    # a spoofed left-most entry does not help: the proxy's appended (right-most) one counts
    r = await hooks.paystack(ev, headers={"x-forwarded-for": "52.31.139.75, 203.0.113.9"})
    assert r.status_code == 403
    r = await hooks.paystack(ev, headers={"x-forwarded-for": "203.0.113.9, 52.214.14.220"})
    assert r.status_code == 200 and r.json()["data"]["outcome"] == "applied"


async def test_missing_secret_is_503_so_the_provider_retries(make_hooks: object) -> None:
    hooks = make_hooks(paystack_secret_key="", revenuecat_webhook_auth="")  # type: ignore[operator]
    r = await hooks.paystack({"event": "charge.success", "data": {}})
    assert r.status_code == 503 and r.json()["error"]["code"] == "WEBHOOK_NOT_CONFIGURED"
    r = await hooks.revenuecat({"event": {"type": "TEST", "id": "x"}})
    assert r.status_code == 503


async def test_an_oversized_body_is_413_and_not_stored(make_hooks: object) -> None:
    hooks = make_hooks(webhook_max_body=4096)  # type: ignore[operator]
    body = encode({"event": "charge.success", "data": {"reference": "big", "padding": "x" * 5000}})
    r = await hooks.paystack(body)
    assert r.status_code == 413
    assert await hooks.deliveries("paystack", "charge.success:big") == []


async def test_a_signed_body_with_a_nul_character_is_stored_as_invalid_not_retried(hooks: Hooks, database_url: str) -> None:
    """Postgres text cannot hold U+0000: such a delivery is kept (raw body) as `invalid` and
    acknowledged, for Paystack and RevenueCat alike, instead of a 503 the provider would
    retry for days."""
    import psycopg

    from tests.functions.webhooks.conftest import rc

    bad_charge = {"event": "charge.success", "data": {"id": 9, "reference": "REF\u0000" + uuid.uuid4().hex, "amount": 1}}
    bad_rc = rc("INITIAL_PURCHASE", "user\u0000" + uuid.uuid4().hex)
    for send, payload in ((hooks.paystack, bad_charge), (hooks.revenuecat, bad_rc)):
        raw = json.dumps(payload).encode()
        assert b"\\u0000" in raw
        first, again = await send(raw), await send(raw)
        assert first.status_code == again.status_code == 200, first.text
        assert first.json()["data"]["outcome"] == "invalid"
        assert again.json()["data"]["duplicate"] is True
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            cur = await conn.execute("select outcome, body from public.webhook_deliveries where id = %s",
                                     (first.json()["data"]["delivery_id"],))
            assert await cur.fetchone() == ("invalid", raw)
