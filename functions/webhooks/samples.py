"""Realistic provider payloads, built from the providers' documented shapes (not from our
models), for tests, benchmarks and `edgefn webhooks trigger`.

Every builder returns the JSON body as a plain dict, exactly what the provider would POST
(sign it with `paystack_signature(body_bytes, secret)`; RevenueCat sends the dashboard's
Authorization value instead). Where each identifier lives follows the providers' own
examples (PaystackOSS/doc-code-snippets `src/doc/payments/webhooks/events/*.json`,
RevenueCat/docs `webhooks/event-types-and-fields`):

- Paystack has no event id. The subscription code is `data.subscription_code` in
  `subscription.*` and `data.subscription.subscription_code` in `invoice.*` (absent from
  `charge.success`); the plan is `data.plan.plan_code` in `charge.success` and
  `subscription.*`, and invoices carry no plan object; a charge's reference is
  `data.reference` in `charge.success`, `data.transaction.reference` in a paid
  `invoice.update` (`{}` in `invoice.payment_failed`) and `data.transaction_reference` in
  `refund.processed`, whose `amount` is a STRING and whose customer has no code. Only
  `charge.success` (`paid_at`), invoices (`paid_at`, `created_at`) and
  `subscription.create` (`createdAt`) carry a time of their own; `subscription.not_renew`
  and `subscription.disable` carry only the subscription's creation time.
- RevenueCat: `event.id` (retries keep it), `event.event_timestamp_ms`; TRANSFER has no
  `app_user_id`, only `transferred_from` / `transferred_to`; users also appear in
  `original_app_user_id` and `aliases`.

The API:

    paystack_event(kind, *, customer_code, email, plan_code, amount, at, user_id=None,
                   reference=None, subscription_code=None, invoice_code=None,
                   next_payment=None, interval="monthly", currency="NGN",
                   refund_amount=None, refund_reference=None) -> dict
    revenuecat_event(kind, *, app_user_id, at, event_id=None, product_id=..., expires=None,
                     original_transaction_id=None, aliases=None, transferred_from=None,
                     transferred_to=None, new_product_id=None, grace_until=None,
                     environment="PRODUCTION") -> dict
    lifecycle("paystack", ids: PaystackIds, *, now=None, refund_of="renewal",
              refund_amount=None) -> list[dict]      # in provider order
    lifecycle("revenuecat", ids: RevenueCatIds, *, now=None) -> list[dict]

`PAYSTACK_KINDS` / `REVENUECAT_KINDS` list every kind the builders make (the issue's
lifecycles: every one can be triggered). `PaystackIds.fresh(user_id, email=...)` and
`RevenueCatIds.fresh(user_id, to_user_id)` make unique ids for one customer.

The Paystack lifecycle, relative to `now` (40 days of a monthly plan):

    charge.success          now-40d   first payment, reference R0, metadata.user_id
    subscription.create     now-40d+4s
    invoice.payment_failed  now-10d   the renewal attempt fails (created_at)
    invoice.update          now-9d    the retry succeeds: reference R1, next payment now+20d
    subscription.not_renew  (no time of its own)
    refund.processed        (no time) of R1 (`refund_of="renewal"`) or R0 ("first"), full
                                      unless `refund_amount` (minor units) is given
    subscription.disable    (no time)

The RevenueCat lifecycle, relative to `now` (t0 = now-80d):

    TEST (t0-1h), INITIAL_PURCHASE (t0, expires t0+30d), PRODUCT_CHANGE (t0+5d),
    RENEWAL (t0+30d, expires t0+60d), CANCELLATION (t0+40d), UNCANCELLATION (t0+45d),
    BILLING_ISSUE (t0+60d, grace to t0+67d), EXPIRATION (t0+67d),
    TRANSFER (t0+75d, from the buyer to `to_user_id`)
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

PAYSTACK_KINDS = (
    "charge.success", "subscription.create", "invoice.create", "invoice.payment_failed", "invoice.update",
    "subscription.not_renew", "refund.processed", "subscription.disable",
)
REVENUECAT_KINDS = (
    "TEST", "INITIAL_PURCHASE", "PRODUCT_CHANGE", "RENEWAL", "CANCELLATION", "UNCANCELLATION", "BILLING_ISSUE",
    "EXPIRATION", "TRANSFER", "NON_RENEWING_PURCHASE", "SUBSCRIPTION_PAUSED",
)


def iso(t: datetime) -> str:
    """Paystack's time format: `2025-02-11T10:42:20.000Z`."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def paystack_signature(body: bytes, secret: str) -> str:
    """`x-paystack-signature`: hex HMAC-SHA512 of the raw body with the secret key."""
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


def _hex(n: int) -> str:
    return uuid.uuid4().hex[:n]


def _authorization() -> dict[str, Any]:
    return {"authorization_code": "AUTH_96xphygz", "bin": "539983", "last4": "7357", "exp_month": "10",
            "exp_year": "2030", "channel": "card", "card_type": "MASTERCARD DEBIT", "bank": "GTBANK",
            "country_code": "NG", "brand": "MASTERCARD", "reusable": True, "signature": "SIG_iCw3p0rsG7LUiQwlsR3t",
            "account_name": "Ada Obi"}


def _customer(customer_code: str, email: str) -> dict[str, Any]:
    return {"id": 46, "first_name": "Ada", "last_name": "Obi", "email": email, "customer_code": customer_code,
            "phone": "", "metadata": {}, "risk_action": "default"}


def _plan(plan_code: str, amount: int, interval: str, currency: str) -> dict[str, Any]:
    return {"id": 103028, "name": "Pro", "plan_code": plan_code, "description": None, "amount": amount,
            "interval": interval, "send_invoices": True, "send_sms": True, "currency": currency}


def paystack_event(
    kind: str, *, customer_code: str, email: str, plan_code: str, amount: int, at: datetime,
    user_id: str | None = None, reference: str | None = None, subscription_code: str | None = None,
    invoice_code: str | None = None, next_payment: datetime | None = None, interval: str = "monthly",
    currency: str = "NGN", refund_amount: int | None = None, refund_reference: str | None = None,
    created_at: datetime | None = None, metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One Paystack webhook body of `kind` (see PAYSTACK_KINDS).

    `at` is the event's moment: the payment (`paid_at`) of a charge or a paid invoice, the
    invoice's creation for `invoice.create` / `invoice.payment_failed`, the subscription's
    creation for `subscription.*` (Paystack sends no other time in those). `reference` is
    the charge's (charge.success, a paid invoice.update) or the refunded charge's
    (refund.processed). `refund_amount` defaults to `amount` (a full refund).
    """
    sub_code = subscription_code or f"SUB_{_hex(15)}"
    created = created_at or at
    if kind == "charge.success":
        meta = dict(metadata) if metadata is not None else {"referrer": "https://example.com/upgrade"}
        if user_id is not None:
            meta.setdefault("user_id", user_id)
        return {"event": kind, "data": {
            "id": int(uuid.uuid4().int % 10**10), "domain": "test", "status": "success",
            "reference": reference or f"T{_hex(15)}", "amount": amount, "message": None,
            "gateway_response": "Successful", "paid_at": iso(at), "created_at": iso(at - timedelta(seconds=17)),
            "channel": "card", "currency": currency, "ip_address": "129.222.206.7", "metadata": meta,
            "fees_breakdown": None, "log": None, "fees": 3000, "fees_split": None, "authorization": _authorization(),
            "customer": _customer(customer_code, email), "plan": _plan(plan_code, amount, interval, currency),
            "subaccount": {}, "split": {}, "order_id": None, "paidAt": iso(at), "requested_amount": amount,
            "pos_transaction_data": None,
            "source": {"type": "web", "source": "checkout", "entry_point": "request_inline", "identifier": None},
        }}
    if kind in ("subscription.create", "subscription.not_renew", "subscription.disable"):
        status = {"subscription.create": "active", "subscription.not_renew": "non-renewing",
                  "subscription.disable": "complete"}[kind]
        nxt = next_payment if next_payment is not None else (created + timedelta(days=30) if kind == "subscription.create" else None)
        data: dict[str, Any] = {
            "domain": "test", "status": status, "subscription_code": sub_code, "email_token": "d7gofp6yppn3qz7",
            "amount": amount, "cron_expression": "0 0 11 * *", "next_payment_date": iso(nxt) if nxt else None,
            "open_invoice": None, "plan": _plan(plan_code, amount, interval, currency),
            "authorization": _authorization(), "customer": _customer(customer_code, email),
            "created_at": iso(created),
        }
        if kind == "subscription.create":
            data["createdAt"] = iso(created)
        else:
            data.update(id=317617, integration=116430, invoices=[], invoices_history=[], invoice_limit=0,
                        split_code=None, most_recent_invoice=None)
        return {"event": kind, "data": data}
    if kind in ("invoice.create", "invoice.update", "invoice.payment_failed"):
        paid = kind == "invoice.update"
        nxt = next_payment or (at + timedelta(days=30))
        inv = invoice_code or f"INV_{_hex(15)}"
        return {"event": kind, "data": {
            "domain": "test", "invoice_code": inv, "amount": amount, "period_start": iso(at), "period_end": iso(nxt),
            "status": "success" if paid else "pending", "paid": paid, "paid_at": iso(at) if paid else None,
            "description": None, "authorization": _authorization(),
            "subscription": {"status": "active", "subscription_code": sub_code, "email_token": "d7gofp6yppn3qz7",
                             "amount": amount, "cron_expression": "0 0 11 * *", "next_payment_date": iso(nxt),
                             "open_invoice": None if paid else inv},
            "customer": _customer(customer_code, email),
            "transaction": ({"reference": reference or f"{uuid.uuid4()}", "status": "success", "amount": amount,
                             "currency": currency} if paid else {}),
            "created_at": iso(at if not paid else at - timedelta(hours=1)),
        }}
    if kind == "refund.processed":
        if reference is None:
            raise ValueError("refund.processed needs the refunded charge's reference")
        return {"event": kind, "data": {
            "status": "processed", "transaction_reference": reference,
            "refund_reference": refund_reference or str(uuid.uuid4().int % 10**12),
            "amount": str(amount if refund_amount is None else refund_amount), "currency": currency,
            "processor": "mpgs_zen", "customer": {"first_name": "Ada", "last_name": "Obi", "email": email},
            "integration": 412829, "domain": "test",
        }}
    raise ValueError(f"unknown Paystack event kind {kind!r}; one of {', '.join(PAYSTACK_KINDS)}")


def revenuecat_event(
    kind: str, *, app_user_id: str | None, at: datetime, event_id: str | None = None,
    product_id: str = "com.example.pro.monthly", expires: datetime | None = None,
    original_transaction_id: str | None = None, aliases: list[str] | None = None,
    transferred_from: list[str] | None = None, transferred_to: list[str] | None = None,
    new_product_id: str | None = None, grace_until: datetime | None = None, environment: str = "PRODUCTION",
    cancel_reason: str = "UNSUBSCRIBE", price: float = 4.99,
) -> dict[str, Any]:
    """One RevenueCat webhook body of `kind` (see REVENUECAT_KINDS); `at` is
    `event_timestamp_ms`. TRANSFER takes `transferred_from` / `transferred_to` and carries
    no app_user_id."""
    base: dict[str, Any] = {"event_timestamp_ms": ms(at), "environment": environment, "store": "APP_STORE",
                            "type": kind, "id": event_id or str(uuid.uuid4()).upper(), "app_id": "app1234567890"}
    if kind == "TRANSFER":
        if not transferred_from or not transferred_to:
            raise ValueError("TRANSFER needs transferred_from and transferred_to")
        base.update(transferred_from=list(transferred_from), transferred_to=list(transferred_to))
        return {"api_version": "1.0", "event": base}
    if kind == "TEST":
        uid = app_user_id or "$RCAnonymousID:test"
        base.update(app_user_id=uid, original_app_user_id=uid, aliases=[uid], environment="SANDBOX")
        return {"api_version": "1.0", "event": base}
    if kind not in REVENUECAT_KINDS:
        raise ValueError(f"unknown RevenueCat event kind {kind!r}; one of {', '.join(REVENUECAT_KINDS)}")
    uid = app_user_id or f"$RCAnonymousID:{_hex(32)}"
    otx = original_transaction_id or f"{uuid.uuid4().int % 10**15:015d}"
    end = expires if expires is not None else at + timedelta(days=30)
    e: dict[str, Any] = {
        **base, "product_id": product_id, "period_type": "NORMAL", "purchased_at_ms": ms(at),
        "expiration_at_ms": None if kind == "NON_RENEWING_PURCHASE" else ms(end),
        "entitlement_id": None, "entitlement_ids": ["pro"], "presented_offering_id": None,
        "transaction_id": f"{uuid.uuid4().int % 10**15:015d}", "original_transaction_id": otx,
        "is_family_share": False, "country_code": "US", "app_user_id": uid,
        "aliases": list(aliases) if aliases is not None else [uid], "original_app_user_id": uid,
        "currency": "USD", "price": price if kind in ("INITIAL_PURCHASE", "RENEWAL", "NON_RENEWING_PURCHASE") else 0.0,
        "price_in_purchased_currency": price if kind in ("INITIAL_PURCHASE", "RENEWAL") else 0.0,
        "takehome_percentage": 0.7, "tax_percentage": 0.0, "commission_percentage": 0.3, "offer_code": None,
    }
    if kind == "CANCELLATION":
        e["cancel_reason"] = cancel_reason
    elif kind == "EXPIRATION":
        e["expiration_reason"] = cancel_reason
    elif kind == "BILLING_ISSUE":
        e["grace_period_expiration_at_ms"] = ms(grace_until) if grace_until else None
    elif kind == "PRODUCT_CHANGE":
        e["new_product_id"] = new_product_id or product_id
    elif kind == "SUBSCRIPTION_PAUSED":
        e["auto_resume_at_ms"] = ms(end + timedelta(days=30))
    return {"api_version": "1.0", "event": e}


# -- whole lifecycles -------------------------------------------------------------------------


@dataclass(frozen=True)
class PaystackIds:
    user_id: str
    email: str
    customer_code: str
    subscription_code: str
    plan_code: str
    amount: int
    first_reference: str
    renewal_reference: str
    invoice_code: str
    refund_reference: str
    interval: str = "monthly"
    currency: str = "NGN"

    @classmethod
    def fresh(cls, user_id: str, *, email: str | None = None, plan_code: str = "PLN_gx2wn530m0i3w3m",
              amount: int = 200000) -> PaystackIds:
        return cls(user_id=user_id, email=email or f"{_hex(10)}@example.com", customer_code=f"CUS_{_hex(15)}",
                   subscription_code=f"SUB_{_hex(15)}", plan_code=plan_code, amount=amount,
                   first_reference=f"T{_hex(15)}", renewal_reference=str(uuid.uuid4()),
                   invoice_code=f"INV_{_hex(15)}", refund_reference=str(uuid.uuid4().int % 10**12))


@dataclass(frozen=True)
class RevenueCatIds:
    user_id: str
    to_user_id: str
    original_transaction_id: str
    anonymous_id: str
    product_id: str = "com.example.pro.monthly"
    new_product_id: str = "com.example.pro.monthly"

    @classmethod
    def fresh(cls, user_id: str, to_user_id: str, *, product_id: str = "com.example.pro.monthly",
              new_product_id: str | None = None) -> RevenueCatIds:
        return cls(user_id=user_id, to_user_id=to_user_id, original_transaction_id=f"{uuid.uuid4().int % 10**15:015d}",
                   anonymous_id=f"$RCAnonymousID:{_hex(32)}", product_id=product_id,
                   new_product_id=new_product_id or product_id)


def paystack_lifecycle(ids: PaystackIds, *, now: datetime | None = None,
                       refund_of: Literal["first", "renewal"] = "renewal",
                       refund_amount: int | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(days=40)
    t1 = now - timedelta(days=10)
    renewal_end = now + timedelta(days=20)
    common = {"customer_code": ids.customer_code, "email": ids.email, "plan_code": ids.plan_code,
              "amount": ids.amount, "interval": ids.interval, "currency": ids.currency,
              "subscription_code": ids.subscription_code}
    sub_created = t0 + timedelta(seconds=4)
    return [
        paystack_event("charge.success", at=t0, user_id=ids.user_id, reference=ids.first_reference, **common),
        paystack_event("subscription.create", at=sub_created, next_payment=t1, **common),
        paystack_event("invoice.payment_failed", at=t1, invoice_code=ids.invoice_code, next_payment=t1, **common),
        paystack_event("invoice.update", at=t1 + timedelta(days=1), invoice_code=ids.invoice_code,
                       reference=ids.renewal_reference, next_payment=renewal_end, **common),
        paystack_event("subscription.not_renew", at=sub_created, **common),
        paystack_event("refund.processed", at=now,
                       reference=ids.renewal_reference if refund_of == "renewal" else ids.first_reference,
                       refund_amount=refund_amount, refund_reference=ids.refund_reference, **common),
        paystack_event("subscription.disable", at=sub_created, next_payment=renewal_end, **common),
    ]


def revenuecat_lifecycle(ids: RevenueCatIds, *, now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(days=80)
    d = timedelta(days=1)

    def ev(kind: str, at: datetime, **kw: Any) -> dict[str, Any]:
        return revenuecat_event(kind, app_user_id=ids.user_id, at=at, product_id=ids.product_id,
                                original_transaction_id=ids.original_transaction_id,
                                aliases=[ids.user_id, ids.anonymous_id], **kw)

    return [
        ev("TEST", t0 - timedelta(hours=1)),
        ev("INITIAL_PURCHASE", t0, expires=t0 + 30 * d),
        ev("PRODUCT_CHANGE", t0 + 5 * d, expires=t0 + 30 * d, new_product_id=ids.new_product_id),
        ev("RENEWAL", t0 + 30 * d, expires=t0 + 60 * d),
        ev("CANCELLATION", t0 + 40 * d, expires=t0 + 60 * d),
        ev("UNCANCELLATION", t0 + 45 * d, expires=t0 + 60 * d),
        ev("BILLING_ISSUE", t0 + 60 * d, expires=t0 + 60 * d, grace_until=t0 + 67 * d),
        ev("EXPIRATION", t0 + 67 * d, expires=t0 + 67 * d),
        revenuecat_event("TRANSFER", app_user_id=None, at=t0 + 75 * d,
                         transferred_from=[ids.user_id], transferred_to=[ids.to_user_id]),
    ]


def lifecycle(provider: str, ids: PaystackIds | RevenueCatIds, *, now: datetime | None = None,
              **options: Any) -> list[dict[str, Any]]:
    """The provider's whole documented lifecycle for one customer, in provider order."""
    if provider == "paystack":
        assert isinstance(ids, PaystackIds)
        return paystack_lifecycle(ids, now=now, **options)
    if provider == "revenuecat":
        assert isinstance(ids, RevenueCatIds)
        return revenuecat_lifecycle(ids, now=now, **options)
    raise ValueError(f"unknown provider {provider!r}: paystack or revenuecat")
