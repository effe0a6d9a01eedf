"""Paystack events: what each one means for a subscription.

Paystack sends `{"event": ..., "data": ...}` with no event id, so a delivery is known by
its type plus the data's reference or id (`charge.success:T173424527684156`; refunds by
their id; subscription and invoice events, whose object changes state more than once, by
its code plus a digest of the body, which a retry repeats exactly). A tier is granted only
by money whose amount and currency equal the plan's price:

- `charge.success`: the plan is Paystack's own (`data.plan.plan_code`), else the plan the
  checkout named in `metadata.plan`; either way the amount and currency must equal that
  plan's price, else the delivery is `flagged` and nothing is granted. The paid period runs
  from the later of the payment and the current period end (paying early loses nothing),
  and is recorded per reference, so a replay never extends twice;
- `invoice.update` (paid): a renewal, checked against the subscription's plan the same way;
  the period runs to Paystack's next payment date;
- `subscription.create`: records the subscription code (later events name only it);
  grants nothing by itself;
- `subscription.not_renew` / `subscription.disable`: `non_renewing` / `cancelled`: access
  lasts to the end of the paid period;
- `invoice.payment_failed`: `past_due` (the paid period still runs);
- `invoice.create`: recorded on the subscription (the upcoming charge);
- `refund.processed`: a full refund takes back the period its charge granted (once); a
  partial one is flagged for a human.

Users: `metadata.user_id` (set by our checkout), else the customer code seen with an
earlier event, else the account with the customer's email.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from functions.webhooks.delivery import Applied, Parsed, body_key, iso, parse_time
from functions.webhooks.models import PaystackData, PaystackEvent, PaystackPlan
from functions.webhooks.queries import Plan, Store, Subscription, is_uuid
from functions.webhooks.settings import WebhooksSettings
from functions.webhooks.state import Change, Transition, add_interval, reduce
from functions.webhooks.truth import Snapshot

PROVIDER = "paystack"
HANDLED = frozenset({
    "charge.success", "subscription.create", "subscription.not_renew", "subscription.disable",
    "invoice.create", "invoice.update", "invoice.payment_failed", "refund.processed",
})
#: charges remembered per subscription (for idempotent periods and refunds)
MAX_CHARGES = 24


def parse(body: bytes) -> Parsed:
    from shared.envelope import has_nul, loads

    try:
        decoded = loads(body)
        ev = PaystackEvent.model_validate(decoded)
    except (ValidationError, ValueError, TypeError) as exc:
        return Parsed(PROVIDER, body_key(body), invalid=f"not a Paystack event: {type(exc).__name__}")
    if has_nul(decoded):  # the raw body is kept (bytea); its text could not be stored or applied
        return Parsed(PROVIDER, body_key(body), invalid="text holds U+0000")
    d = ev.data
    ident: str | None = d.reference if ev.event.startswith("charge.") else None
    if ev.event.startswith(("subscription.", "invoice.")):
        # the same subscription or invoice changes state more than once and Paystack sends
        # no event id; a retry repeats the body byte for byte. (Applying these twice would
        # be harmless anyway: statuses are ordered, periods only extend to a date.)
        code = d.subscription_code if ev.event.startswith("subscription.") else d.invoice_code
        ident = code and f"{code}:{hashlib.sha256(body).hexdigest()[:16]}"
    elif ev.event.startswith("refund."):
        ident = str(d.id) if d.id is not None else d.refund_reference or d.transaction_reference
    ident = ident or d.reference or (str(d.id) if d.id is not None else None)
    key = f"{ev.event}:{ident}" if ident else f"{ev.event}:{body_key(body)}"
    return Parsed(PROVIDER, key[:500], ev.event, _event_time(ev.event, d), _subject(d), ev)


def _paid(d: PaystackData) -> bool:
    return d.paid is True or (d.status or "").lower() == "success"


def _event_time(event: str, d: PaystackData) -> datetime | None:
    if event.startswith("charge."):
        return parse_time(d.paid_at or d.paidAt or d.created_at or d.createdAt)
    if event.startswith("invoice."):
        return parse_time((d.paid_at if _paid(d) else None) or d.updated_at or d.updatedAt)
    # otherwise only the object's creation time is sent, which says nothing about when this
    # change happened: the receipt time is closer
    return parse_time(d.updated_at or d.updatedAt)


def _subject(d: PaystackData) -> str | None:
    c = d.customer
    return (c.email or c.customer_code) if c is not None else None


def _metadata(d: PaystackData) -> dict[str, Any]:
    m = d.metadata
    if isinstance(m, str) and m.strip().startswith("{"):
        from shared.envelope import loads

        try:
            m = loads(m)
        except ValueError:
            return {}
    return m if isinstance(m, dict) else {}


def _plan_code(d: PaystackData) -> str | None:
    p = d.plan
    if isinstance(p, PaystackPlan):
        return p.plan_code
    return p or None


async def _user(store: Store, d: PaystackData, *, plan_code: str | None = None,
                provider_plan_code: str | None = None) -> tuple[str | None, Plan | None]:
    """The user (and, in the same round trip, the plan when one is named)."""
    meta = _metadata(d)
    hint = meta.get("user_id") or meta.get("supabase_user_id")
    c = d.customer
    code = c.customer_code if c is not None else None
    email = (c.email or "").strip().lower() or None if c is not None else None
    return await store.user_and_plan(
        PROVIDER, user_ids=[hint] if is_uuid(hint) else [], external_ids=[code] if code else [],
        email=email, learn=[code] if code else [], plan_code=plan_code, provider_plan_code=provider_plan_code,
    )


def _price_problem(plan: Plan, amount: int | None, currency: str | None) -> str | None:
    if amount != plan.amount_minor or (currency or "").upper() != plan.currency:
        return (f"paid {amount} {currency}, but plan {plan.code} costs {plan.amount_minor} {plan.currency}: "
                "nothing granted")
    return None


def _ref(d: PaystackData, plan: Plan) -> str:
    """One subscription per customer and plan: the charge, the Paystack subscription and its
    invoices all land on the same row."""
    code = d.customer.customer_code if d.customer is not None else None
    return f"{code}:{plan.code}" if code else f"charge:{d.reference}"


def _write(applied: Applied, sub: Subscription, change: Change) -> tuple[Subscription, Any]:
    t = reduce(sub.state, change)
    applied.changes.append((sub, t))
    applied.users.add(sub.user_id)
    applied.subscription_id = sub.id
    applied.user_id = sub.user_id
    if t.stale and t.before == t.after:
        applied.outcome = "stale"
    return sub, t


async def apply(store: Store, p: Parsed, at: datetime, settings: WebhooksSettings, remote: Any = None) -> Applied:
    ev: PaystackEvent = p.event
    if ev.event not in HANDLED:
        return Applied("ignored", f"{ev.event} is recorded, not acted on")
    d = ev.data
    snap: Snapshot | None = remote if isinstance(remote, Snapshot) else None
    if snap is not None and snap.kind == "transaction":  # PAYSTACK_VERIFY: Paystack's record of the charge
        if not snap.paid:
            return Applied("flagged", f"Paystack says transaction {snap.key} is {snap.data.get('status')!r}, "
                                      "not success: nothing granted")
        d = d.model_copy(update={"amount": snap.amount, "currency": snap.currency, "status": "success"})
    handler = _HANDLERS[ev.event]
    applied = await handler(store, d, at)
    if snap is not None and snap.kind == "subscription" and applied.changes:
        _verified(applied, snap, at)
    for sub, t in applied.changes:
        if t.after != t.before:
            store.save_subscription(sub, t.after)
    return applied


def _verified(applied: Applied, snap: Snapshot, at: datetime) -> None:
    """PAYSTACK_VERIFY: the subscription as `GET /subscription/:code` answered it wins over the
    body: its status and, while it grants, its next payment date as the paid period's end."""
    sub, t = applied.changes[-1]
    granting = snap.status in ("active", "non_renewing", "past_due")
    after = reduce(t.after, Change(
        at, status=snap.status, status_rule="force",
        period_end=snap.period_end if granting else None, period_rule="force",
        metadata={"verified_at": iso(snap.fetched_at), "paystack_status": snap.data.get("status")},
    )).after
    applied.changes[-1] = (sub, Transition(t.before, after, stale=False))
    if applied.outcome == "stale":
        applied.outcome = "applied"


async def _charge_success(store: Store, d: PaystackData, at: datetime) -> Applied:
    if (d.status or "success").lower() != "success":
        return Applied("ignored", f"charge status {d.status}")
    code = _plan_code(d)
    named = _metadata(d).get("plan") or _metadata(d).get("plan_code")
    if not code and not named:
        return Applied("ignored", "a payment without a plan")
    # Paystack's own plan wins; the checkout's metadata only names one when Paystack has none
    user, plan = await _user(store, d, provider_plan_code=code, plan_code=None if code else str(named))
    if plan is None:
        return Applied("flagged", f"charge for an unknown plan {code or named}: nothing granted", user_id=user)
    if user is None:
        return Applied("pending", "unknown user: waiting for the account")
    problem = _price_problem(plan, d.amount, d.currency)
    if problem:
        return Applied("flagged", problem, user_id=user)
    sub = await store.lock_subscription(PROVIDER, _ref(d, plan), user)
    charges: dict[str, Any] = dict(sub.state.metadata.get("charges") or {})
    ref = d.reference or f"id:{d.id}"
    seen = charges.get(ref)
    end: datetime | None
    if seen is not None:  # applied before: the same period, never extended twice (none once refunded)
        end = None if seen.get("refunded") else parse_time(seen["end"])
    else:
        current = sub.state.current_period_end
        start = max(at, current) if current is not None and sub.state.grants(at) else at
        end = add_interval(start, plan.interval)
        charges[ref] = {"start": iso(start), "end": iso(end), "amount": d.amount, "currency": plan.currency}
        if len(charges) > MAX_CHARGES:
            for old in sorted(charges, key=lambda r: charges[r]["start"])[: len(charges) - MAX_CHARGES]:
                del charges[old]
    meta = {"charges": charges, "last_reference": ref}
    if d.customer is not None and d.customer.customer_code:
        meta["customer_code"] = d.customer.customer_code
    applied = Applied("applied")
    _write(applied, sub, Change(at, status="active", tier=plan.tier, plan_code=plan.code,
                                period_end=end, period_rule="extend_to", metadata=meta))
    return applied


async def _subscription_create(store: Store, d: PaystackData, at: datetime) -> Applied:
    code = _plan_code(d)
    if not code:
        return Applied("ignored", "subscription without a plan")
    user, plan = await _user(store, d, provider_plan_code=code)
    if plan is None:
        return Applied("ignored", f"subscription to a plan that is not ours ({code})")
    if user is None:
        return Applied("pending", "unknown user: waiting for the account")
    currency = d.plan.currency if isinstance(d.plan, PaystackPlan) else None
    problem = _price_problem(plan, d.amount, currency or d.currency or plan.currency)
    if problem:
        return Applied("flagged", problem, user_id=user)
    sub = await store.lock_subscription(PROVIDER, _ref(d, plan), user)
    meta = {"subscription_code": d.subscription_code, "email_token": d.email_token,
            "next_payment_date": d.next_payment_date, "paystack_status": d.status}
    applied = Applied("applied")
    # grants nothing by itself: access comes from the checked charge
    _write(applied, sub, Change(at, tier=plan.tier, plan_code=plan.code, period_rule="extend_to",
                                metadata={k: v for k, v in meta.items() if v is not None}))
    return applied


async def _subscription_status(store: Store, d: PaystackData, at: datetime, status: str) -> Applied:
    sub = await store.paystack_subscription(d.subscription_code)
    if sub is None:
        code = _plan_code(d)
        user, plan = await _user(store, d, provider_plan_code=code) if code else (None, None)
        if plan is None:
            return Applied("ignored", f"unknown subscription {d.subscription_code}")
        if user is None:
            return Applied("pending", "unknown user: waiting for the account")
        sub = await store.lock_subscription(PROVIDER, _ref(d, plan), user)
    applied = Applied("applied")
    meta = {"subscription_code": d.subscription_code, "paystack_status": d.status}
    _write(applied, sub, Change(at, status=status, metadata={k: v for k, v in meta.items() if v is not None}))
    return applied


async def _not_renew(store: Store, d: PaystackData, at: datetime) -> Applied:
    return await _subscription_status(store, d, at, "non_renewing")


async def _disable(store: Store, d: PaystackData, at: datetime) -> Applied:
    return await _subscription_status(store, d, at, "cancelled")


async def _invoice_sub(store: Store, d: PaystackData) -> Subscription | None:
    code = (d.subscription or {}).get("subscription_code") or d.subscription_code
    return await store.paystack_subscription(code)


async def _invoice_create(store: Store, d: PaystackData, at: datetime) -> Applied:
    sub = await _invoice_sub(store, d)
    if sub is None:
        return Applied("ignored", "invoice for an unknown subscription")
    applied = Applied("applied")
    _write(applied, sub, Change(at, period_rule="extend_to", metadata={"open_invoice": d.invoice_code}))
    return applied


async def _invoice_update(store: Store, d: PaystackData, at: datetime) -> Applied:
    sub = await _invoice_sub(store, d)
    paid = _paid(d)
    if sub is None:
        if paid:
            user, _ = await _user(store, d)
            return Applied("flagged" if user else "pending",
                           "paid invoice for an unknown subscription" if user else "unknown user: waiting for the account",
                           user_id=user)
        return Applied("ignored", "invoice for an unknown subscription")
    applied = Applied("applied")
    if not paid:
        _write(applied, sub, Change(at, period_rule="extend_to", metadata={"open_invoice": d.invoice_code}))
        return applied
    plan = await store.plan(PROVIDER, code=sub.state.plan_code) if sub.state.plan_code else None
    if plan is None:
        return Applied("flagged", f"paid invoice for a subscription without a known plan ({sub.state.plan_code})",
                       user_id=sub.user_id, subscription_id=sub.id)
    currency = d.currency or (d.transaction or {}).get("currency") or plan.currency
    problem = _price_problem(plan, d.amount, currency)
    if problem:
        return Applied("flagged", problem, user_id=sub.user_id, subscription_id=sub.id)
    end = parse_time((d.subscription or {}).get("next_payment_date")) or parse_time(d.period_end)
    if end is None:
        end = add_interval(at, plan.interval)
    _write(applied, sub, Change(at, status="active", period_end=end, period_rule="extend_to",
                                metadata={"open_invoice": None, "last_invoice": d.invoice_code}))
    return applied


async def _payment_failed(store: Store, d: PaystackData, at: datetime) -> Applied:
    sub = await _invoice_sub(store, d)
    if sub is None:
        return Applied("ignored", "failed invoice for an unknown subscription")
    applied = Applied("applied")
    _write(applied, sub, Change(at, status="past_due", metadata={"open_invoice": d.invoice_code}))
    return applied


async def _refund(store: Store, d: PaystackData, at: datetime) -> Applied:
    if (d.status or "processed").lower() != "processed":
        return Applied("ignored", f"refund status {d.status}")
    ref = d.transaction_reference or (d.transaction or {}).get("reference")
    charge = await store.delivery_by_key(PROVIDER, f"charge.success:{ref}") if ref else None
    if charge is None:
        return Applied("pending", f"refund of charge {ref}, which has not arrived")
    if charge["subscription_id"] is None:
        return Applied("ignored", f"refund of charge {ref}, which granted nothing")
    sub = await store.subscription_by_id(str(charge["subscription_id"]))
    if sub is None:
        return Applied("ignored", "the refunded subscription is gone")
    charges: dict[str, Any] = dict(sub.state.metadata.get("charges") or {})
    granted = charges.get(ref or "")
    if granted is None:
        return Applied("flagged", f"refund of charge {ref}, whose period is no longer recorded",
                       user_id=sub.user_id, subscription_id=sub.id)
    applied = Applied("applied")
    if granted.get("refunded"):
        _write(applied, sub, Change(at, period_rule="extend_to"))
        return applied
    if d.amount is None or d.amount < int(granted.get("amount") or 0):
        return Applied("flagged", f"partial refund ({d.amount} of {granted.get('amount')}): access unchanged",
                       user_id=sub.user_id, subscription_id=sub.id)
    start, end = parse_time(granted["start"]), parse_time(granted["end"])
    current = sub.state.current_period_end
    assert start is not None and end is not None
    new_end = (current - (end - start)) if current is not None else start
    charges[ref or ""] = {**granted, "refunded": True}
    status = "expired" if new_end <= datetime.now(UTC) else None
    _write(applied, sub, Change(at, status=status, status_rule="force", period_end=new_end, period_rule="force",
                                metadata={"charges": charges}))
    return applied


_HANDLERS = {
    "charge.success": _charge_success,
    "subscription.create": _subscription_create,
    "subscription.not_renew": _not_renew,
    "subscription.disable": _disable,
    "invoice.create": _invoice_create,
    "invoice.update": _invoice_update,
    "invoice.payment_failed": _payment_failed,
    "refund.processed": _refund,
}
