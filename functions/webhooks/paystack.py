"""Paystack events: their facts, and how a customer's facts fold into subscriptions.

Paystack sends `{"event": ..., "data": ...}` with no event id, so a delivery is known by
its type plus the data's reference or id (`charge.success:T173424527684156`; refunds by
their refund reference; subscription and invoice events, whose object changes state more
than once, by its code plus a digest of the body, which a retry repeats exactly).

The stream is the Paystack customer (`data.customer.customer_code`): every event but a
refund names it. A refund names only its charge (`data.transaction_reference`) and joins
that charge's stream; until the charge is recorded it waits (`pending`) and the charge's
own delivery folds it in. Each subscription row is one customer and one of our plans
(`{customer_code}:{plan}`); invoices name only the subscription code, whose plan comes
from a `subscription.create` / `not_renew` / `disable` (or a provider snapshot) naming
both. Until one is recorded the invoice waits.

What each fact does in the fold (state.py orders them):

- `charge.success`: a payment of the plan Paystack names (`data.plan.plan_code`), else of
  the plan the checkout named in `metadata.plan`; its amount and currency must be the
  plan's price, else `flagged` and nothing is granted. Paid period: from the later of the
  payment and the current period end, one interval long, recorded per reference (the
  renewal's own charge.success and its invoice.update share a reference: counted once);
- `invoice.update` (paid): a renewal of the subscription's plan, checked the same way;
  paid period from `period_start` to the subscription's `next_payment_date`;
- `invoice.payment_failed`: `past_due` (the paid period still runs); `invoice.create`
  and unpaid updates change nothing;
- `subscription.create`: the subscription code of the customer's plan (grants nothing);
- `subscription.not_renew` / `subscription.disable` (no time of their own): only move
  forward, to `non_renewing` / `cancelled`; access lasts to the end of the paid period.
  A notice about an older subscription code of the same customer and plan is `stale`;
- `refund.processed` (amount is a string): recorded against its charge, whichever event
  paid it. Once the refunds of a charge add up to its amount, the period it paid for is
  taken back (the period end moves back by its length: a full refund of the current
  period's charge ends access where that period began); when every charge is refunded,
  the subscription is `expired`. A partial refund changes no access.

Users, per event: a verified `metadata.user_id` (a live account), then the subscription's
owner, then the customer code (`billing_customers`), then the customer's email. An event
whose verified user is not the owner is `flagged` with both ids and grants nothing.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from functions.webhooks.delivery import FoldContext, Parsed, body_key, iso, parse_time
from functions.webhooks.models import PaystackData, PaystackEvent, PaystackPlan
from functions.webhooks.queries import Plan, is_uuid
from functions.webhooks.state import (
    Fact,
    Folded,
    Result,
    Row,
    SubState,
    add_interval,
    expand,
    order_key,
    parse_dt,
)

PROVIDER = "paystack"
HANDLED = frozenset({
    "charge.success", "subscription.create", "subscription.not_renew", "subscription.disable",
    "invoice.create", "invoice.update", "invoice.payment_failed", "refund.processed",
})
#: Paystack's subscription statuses (API and events) as ours
STATUSES = {"active": "active", "non-renewing": "non_renewing", "attention": "past_due", "complete": "cancelled",
            "completed": "cancelled", "cancelled": "cancelled"}


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
        # no event id; a retry repeats the body byte for byte
        code = d.subscription_code if ev.event.startswith("subscription.") else d.invoice_code
        ident = code and f"{code}:{hashlib.sha256(body).hexdigest()[:16]}"
    elif ev.event.startswith("refund."):
        ident = str(d.id) if d.id is not None else d.refund_reference or d.transaction_reference
    ident = ident or d.reference or (str(d.id) if d.id is not None else None)
    key = f"{ev.event}:{ident}" if ident else f"{ev.event}:{body_key(body)}"
    fact, ignored = _fact(ev.event, d)
    customer = d.customer.customer_code if d.customer is not None else None
    stream = keys = waits = None
    if fact is not None:
        if fact["kind"] == "refund":
            waits = f"ref:{fact['ref']}"
        else:
            stream = f"cus:{customer}" if customer else (f"ref:{d.reference}" if d.reference else None)
            if fact.get("ref"):
                keys = [f"ref:{fact['ref']}"]
            if stream is None:
                fact, ignored = None, "names no customer"
    at = parse_time(fact["at"]) if fact and fact.get("at") else None
    return Parsed(PROVIDER, key[:500], ev.event, at, _subject(d), ev, fact=fact, stream=stream,
                  keys=keys, waits=waits, ignored=ignored)


def _paid(d: PaystackData) -> bool:
    return d.paid is True or (d.status or "").lower() == "success"


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


def _amount(value: Any) -> int | None:
    """Paystack's amounts: integers, except refunds' (strings in the docs)."""
    try:
        return int(str(value).strip()) if value is not None and str(value).strip() else None
    except ValueError:
        return None


def _t(value: str | None) -> str | None:
    return iso(parse_time(value))


def _fact(event: str, d: PaystackData) -> tuple[dict[str, Any] | None, str | None]:
    """(the fact the fold reads, None) or (None, why the event is only recorded)."""
    if event not in HANDLED:
        return None, f"{event} is recorded, not acted on"
    c = d.customer
    who = {"customer": c.customer_code if c else None,
           "email": ((c.email or "").strip().lower() or None) if c else None}
    extra = d.model_extra or {}
    if event == "charge.success":
        if (d.status or "success").lower() != "success":
            return None, f"charge status {d.status}"
        meta = _metadata(d)
        named = meta.get("plan") or meta.get("plan_code")
        code = _plan_code(d)
        if not code and not named:
            return None, "a payment without a plan"
        hint = meta.get("user_id") or meta.get("supabase_user_id")
        return {"kind": "charge", "at": _t(d.paid_at or d.paidAt or d.created_at or d.createdAt),
                "ref": d.reference or f"id:{d.id}", "plan": code, "meta_plan": None if code else str(named),
                "amount": d.amount, "currency": (d.currency or "").upper(),
                "user": hint if isinstance(hint, str) else None, **who}, None
    if event.startswith("subscription."):
        kind = {"subscription.create": "sub_create", "subscription.not_renew": "not_renew",
                "subscription.disable": "disable"}[event]
        plan = d.plan if isinstance(d.plan, PaystackPlan) else None
        f: dict[str, Any] = {"kind": kind, "sub": d.subscription_code, "plan": _plan_code(d), **who}
        if kind == "sub_create":
            # its creation time is this event's own time (not so for the notices that follow)
            f.update(at=_t(d.createdAt or d.created_at), amount=d.amount,
                     currency=((plan.currency if plan else None) or d.currency or "").upper() or None,
                     next_payment=_t(d.next_payment_date), email_token=d.email_token)
        if not d.subscription_code:
            return None, "a subscription event without a subscription code"
        return f, None
    if event.startswith("invoice."):
        sub = (d.subscription or {}).get("subscription_code") or d.subscription_code
        if not sub:
            return None, "an invoice without a subscription code"
        base = {"sub": sub, "invoice": d.invoice_code, **who}
        if event == "invoice.payment_failed":
            return {"kind": "invoice_failed", "at": _t(d.created_at or d.createdAt), **base}, None
        if event == "invoice.update" and _paid(d):
            tx = d.transaction or {}
            ref = tx.get("reference") or f"invoice:{d.invoice_code}"
            return {"kind": "invoice_paid", "at": _t(d.paid_at or d.paidAt or d.updated_at or d.created_at),
                    "ref": ref, "amount": d.amount if d.amount is not None else tx.get("amount"),
                    "currency": (d.currency or tx.get("currency") or "").upper() or None,
                    "start": _t(d.period_start),
                    "next_payment": _t((d.subscription or {}).get("next_payment_date") or d.period_end), **base}, None
        return {"kind": "invoice_open", "at": _t(d.created_at or d.createdAt), **base}, None
    # refund.processed
    if (d.status or "processed").lower() != "processed":
        return None, f"refund status {d.status}"
    ref = d.transaction_reference or (d.transaction or {}).get("reference")
    if not ref:
        return None, "a refund that names no charge"
    amount = _amount(extra.get("amount") if d.amount is None else d.amount)
    return {"kind": "refund", "at": None, "ref": ref, "refund": d.refund_reference or str(d.id),
            "amount": amount, **who}, None


def with_truth(fact: dict[str, Any], snap: Any) -> None:
    """PAYSTACK_VERIFY: what Paystack's API answered (truth.Snapshot) rides on the fact. A
    transaction read replaces the charge's amount and currency (only `success` grants); a
    subscription read is folded as a provider snapshot at its fetch time: its status, and
    while it grants, its next payment date as the paid period's end."""
    if snap.kind == "transaction":
        fact["verified"] = {"paid": bool(snap.paid), "amount": snap.amount, "currency": snap.currency,
                            "status": snap.data.get("status"), "at": iso(snap.fetched_at)}
    elif snap.kind == "subscription":
        granting = snap.status in ("active", "non_renewing", "past_due")
        fact["snapshot"] = {"at": iso(snap.fetched_at), "status": snap.status, "sub": snap.key,
                            "plan": snap.plan_code, "period_end": iso(snap.period_end) if granting else None,
                            "paystack_status": snap.data.get("status")}


# -- the fold ------------------------------------------------------------------------------


def _price_problem(plan: Plan, amount: Any, currency: str | None) -> str | None:
    if amount != plan.amount_minor or (currency or plan.currency).upper() != plan.currency:
        return (f"paid {amount} {currency or ''}, but plan {plan.code} costs {plan.amount_minor} {plan.currency}: "
                "nothing granted")
    return None


class _Fold:
    def __init__(self, facts: list[Fact], ctx: FoldContext, stream: str = "") -> None:
        self.ctx = ctx
        self.stream = stream
        self.facts = sorted(expand(facts), key=order_key)
        self.out = Folded()
        self.charges: dict[str, tuple[Row, dict[str, Any]]] = {}
        #: subscription code -> our plan, from every fact naming both
        self.sub_plan: dict[str, Plan | None] = {}
        #: subscription code -> when Paystack was last read about it (a notice received before
        #: that is already in the answer)
        self.read_at: dict[str, datetime] = {}
        self.customer = next((f.data["customer"] for f in self.facts if f.data.get("customer")), None)
        #: deliveries whose own read-back is in the fold (their notice is in that answer)
        self.carried = {f.delivery_id for f in self.facts if f.kind == "provider_snapshot"}
        for f in self.facts:
            if f.kind == "provider_snapshot" and f.at is not None and f.data.get("sub"):
                self.read_at[f.data["sub"]] = max(f.at, self.read_at.get(f.data["sub"], f.at))
            if f.kind in ("sub_create", "not_renew", "disable", "provider_snapshot") and f.data.get("sub"):
                plan = self._plan(f.data.get("plan"), f.data.get("plan_code"))
                if plan is not None or f.data["sub"] not in self.sub_plan:
                    self.sub_plan[f.data["sub"]] = plan

    def _plan(self, provider_code: str | None, code: str | None = None) -> Plan | None:
        return self.ctx.plans.get(f"pp:{provider_code}") if provider_code else (
            self.ctx.plans.get(f"code:{code}") if code else None)

    def _row(self, customer: str | None, plan: Plan) -> Row:
        customer = customer or self.customer  # a snapshot names no customer: the stream's
        # a charge naming no customer is a stream of its own (`ref:<reference>`): its row is
        # keyed by its reference (`charge:<reference>`, as before streams existed), never
        # by one "no customer" row every such payer would share
        ref = f"{customer}:{plan.code}" if customer else f"charge:{self.stream.removeprefix('ref:')}"
        row = self.out.rows.get(ref)
        if row is None:
            row = self.out.rows[ref] = Row(ref, state=SubState(tier=plan.tier, plan_code=plan.code,
                                                               metadata={"customer_code": customer, "charges": {}}))
        return row

    def _who(self, f: Fact, row: Row) -> tuple[str | None, Result | None]:
        """The user this event is for, or the result that stops it (pending / flagged)."""
        hint = f.data.get("user")
        if hint:
            user = self.ctx.users.get(f"uid:{hint}") if is_uuid(hint) else None
            if user is None:
                return None, Result("pending", f"unknown user {hint}: waiting for the account")
            if row.owner is not None and row.owner != user:
                return None, Result("flagged", f"owner conflict: subscription {row.ref} belongs to {row.owner}, "
                                               f"this payment names {user}: nothing granted", user)
            return user, None
        if row.owner is not None:
            return row.owner, None
        user = (self.ctx.users.get(f"ext:{f.data.get('customer')}") if f.data.get("customer") else None) or (
            self.ctx.users.get(f"email:{f.data.get('email')}") if f.data.get("email") else None)
        if user is None:
            return None, Result("pending", "unknown user: waiting for the account")
        return user, None

    def _take(self, f: Fact, row: Row, user: str, status: str | None = None, **changes: Any) -> Result:
        if row.owner is None:
            row.owner = user
        s = row.state
        meta = {**s.metadata, **changes.pop("metadata", {})}
        last = s.last_event_at if f.at is None else max(filter(None, (s.last_event_at, f.at)))
        row.state = SubState(status=status or s.status, tier=changes.get("tier", s.tier),
                             plan_code=changes.get("plan_code", s.plan_code),
                             current_period_end=changes.get("end", s.current_period_end), last_event_at=last,
                             metadata=meta)
        row.touch(f)
        return Result("applied", changes.get("note"), user, row.ref)

    def run(self) -> Folded:
        for f in self.facts:
            handler = getattr(self, f"_{f.kind}", None)
            res = handler(f) if handler is not None else Result("ignored", f"{f.kind} is not a Paystack fact")
            if f.kind == "provider_snapshot":
                continue  # the delivery it rides on has its own result
            self.out.results[f.delivery_id] = res
        return self.out

    def _paid(self, f: Fact, row: Row, start: datetime, end: datetime, amount: int, currency: str | None,
              user: str) -> Result:
        ref = f.data["ref"]
        if ref in self.charges:  # the renewal's charge.success and its invoice.update: one payment
            return self._take(f, row, user, note=f"charge {ref} already counted")
        entry = {"start": iso(start), "end": iso(end), "amount": amount, "currency": currency, "refunds": {},
                 "refunded": False}
        charges = {**row.state.metadata.get("charges", {}), ref: entry}
        current = row.state.current_period_end
        new_end = end if current is None else max(current, end)
        self.charges[ref] = (row, entry)
        status = row.state.status if row.state.status in ("non_renewing", "cancelled") else "active"
        return self._take(f, row, user, status, end=new_end, metadata={"charges": charges, "last_reference": ref})

    def _charge(self, f: Fact) -> Result:
        d = f.data
        plan = self._plan(d.get("plan"), d.get("meta_plan"))
        if plan is None:
            return Result("flagged", f"charge for an unknown plan {d.get('plan') or d.get('meta_plan')}: nothing granted")
        row = self._row(d.get("customer"), plan)
        user, stop = self._who(f, row)
        if stop is not None:
            return stop
        assert user is not None
        verified = d.get("verified")
        if verified and not verified["paid"]:
            return Result("flagged", f"Paystack says transaction {d['ref']} is {verified.get('status')!r}, "
                                     "not success: nothing granted", user, row.ref)
        if verified:
            d = {**d, "amount": verified["amount"], "currency": (verified.get("currency") or "").upper() or None}
        problem = _price_problem(plan, d.get("amount"), d.get("currency"))
        if problem:
            return Result("flagged", problem, user, row.ref)
        if d.get("user") and d.get("customer"):
            self.out.learnt.setdefault(d["customer"], user)
        at = f.at or parse_dt(d.get("at"))
        assert at is not None
        current = row.state.current_period_end
        start = max(at, current) if current is not None and row.state.grants(at) else at
        return self._paid(f, row, start, add_interval(start, plan.interval), d["amount"], plan.currency, user)

    def _sub_row(self, f: Fact) -> tuple[Row | None, Result | None]:
        sub = f.data.get("sub")
        plan = self.sub_plan.get(sub)
        if plan is None:
            if sub in self.sub_plan:
                return None, Result("ignored", f"subscription {sub} is to a plan that is not ours")
            return None, Result("pending", f"waits for the subscription.create of {sub} (its plan)")
        return self._row(f.data.get("customer"), plan), None

    def _owned(self, f: Fact) -> tuple[Row, str] | Result:
        """The row and owner of an event that names a subscription, or what stops it: waiting
        for its plan, not ours, an owner conflict."""
        row, stop = self._sub_row(f)
        if row is None:
            return stop or Result("ignored")
        user, stop = self._who(f, row)
        if stop is not None:
            return stop
        assert user is not None
        return row, user

    def _priced(self, f: Fact) -> tuple[Row, Plan, str] | Result:
        """The row, plan and user of an event that names a subscription and an amount (its
        creation, a paid invoice), or what stops it: waiting for its plan, an owner
        conflict, a price that is not the plan's."""
        owned = self._owned(f)
        if isinstance(owned, Result):
            return owned
        row, user = owned
        plan = self.sub_plan[f.data["sub"]]
        assert plan is not None
        problem = _price_problem(plan, f.data.get("amount"), f.data.get("currency"))
        if problem:
            return Result("flagged", problem, user, row.ref)
        return row, plan, user

    def _sub_create(self, f: Fact) -> Result:
        priced = self._priced(f)
        if isinstance(priced, Result):
            return priced
        row, plan, user = priced
        status = "active" if row.state.status == "pending" else None
        meta = {k: f.data.get(k) for k in ("email_token", "next_payment") if f.data.get(k)}
        return self._take(f, row, user, status, metadata={"subscription_code": f.data["sub"], **meta})

    def _notice(self, f: Fact, target: str, allowed: frozenset[str]) -> Result:
        owned = self._owned(f)
        if isinstance(owned, Result):
            return owned
        row, user = owned
        current = row.state.metadata.get("subscription_code")
        if current and current != f.data["sub"]:
            return Result("stale", f"about {f.data['sub']}, an earlier subscription than {current}", user, row.ref)
        read = self.read_at.get(f.data["sub"])
        received = parse_dt(f.data.get("received"))
        if f.delivery_id in self.carried or (read is not None and received is not None and received <= read):
            # Paystack was read after this notice arrived: its answer already says it
            return self._take(f, row, user, None, note="already in the provider's answer read after it")
        status = target if row.state.status in allowed else None
        return self._take(f, row, user, status, metadata={"subscription_code": f.data["sub"]})

    def _not_renew(self, f: Fact) -> Result:
        return self._notice(f, "non_renewing", frozenset({"active", "past_due", "pending"}))

    def _disable(self, f: Fact) -> Result:
        return self._notice(f, "cancelled", frozenset({"active", "past_due", "pending", "non_renewing"}))

    def _invoice_open(self, f: Fact) -> Result:
        row, stop = self._sub_row(f)
        if row is None:
            return stop or Result("ignored")
        user, stop = self._who(f, row)
        return stop or self._take(f, row, user or "")

    def _invoice_failed(self, f: Fact) -> Result:
        owned = self._owned(f)
        if isinstance(owned, Result):
            return owned
        row, user = owned
        status = "past_due" if row.state.status in ("active", "pending") else None
        return self._take(f, row, user, status)

    def _invoice_paid(self, f: Fact) -> Result:
        priced = self._priced(f)
        if isinstance(priced, Result):
            return priced
        row, plan, user = priced
        at = f.at or parse_dt(f.data.get("start"))
        assert at is not None
        start = parse_dt(f.data.get("start")) or at
        end = parse_dt(f.data.get("next_payment")) or add_interval(start, plan.interval)
        return self._paid(f, row, start, end, plan.amount_minor, plan.currency, user)

    def _refund(self, f: Fact) -> Result:
        ref = f.data["ref"]
        found = self.charges.get(ref)
        if found is None:
            return Result("pending", f"refund of charge {ref}, which has not arrived (or granted nothing)")
        row, entry = found
        refunds = {**entry["refunds"], f.data.get("refund") or str(f.delivery_id): f.data.get("amount")}
        entry["refunds"] = refunds
        total = sum(a or 0 for a in refunds.values())
        user = row.owner or ""
        if entry["refunded"] or total < int(entry["amount"] or 0):
            return Result("applied", None if entry["refunded"] else
                          f"partial refund ({total} of {entry['amount']}): access unchanged", user, row.ref)
        entry["refunded"] = True
        start, end = parse_dt(entry["start"]), parse_dt(entry["end"])
        assert start is not None and end is not None
        current = row.state.current_period_end or end
        new_end = current - (end - start)
        charges = row.state.metadata.get("charges", {})
        everything = all(c.get("refunded") for c in charges.values())
        return self._take(f, row, user, "expired" if everything else None, end=new_end)

    def _provider_snapshot(self, f: Fact) -> Result:
        d = f.data
        row, stop = self._sub_row(f) if d.get("sub") else (None, Result("ignored", "a snapshot naming no subscription"))
        if row is None:
            return stop or Result("ignored")
        user, stop = self._who(f, row)
        if stop is not None:
            return stop
        assert user is not None
        status = STATUSES.get(str(d.get("status")), d.get("status")) or None
        end = parse_dt(d.get("period_end")) or row.state.current_period_end
        meta = {"verified_at": iso(f.at), "paystack_status": d.get("paystack_status")}
        return self._take(f, row, user, status, end=end, metadata={k: v for k, v in meta.items() if v})


def fold(facts: list[Fact], ctx: FoldContext, stream: str = "") -> Folded:
    return _Fold(facts, ctx, stream).run()


def identifiers(facts: list[Fact]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(user ids, external ids, emails, plan codes) the facts name: what the fold looks up."""
    uids, ext, emails, plans = set(), set(), set(), set()
    for f in facts:
        d = f.data
        if d.get("user") and is_uuid(d["user"]):
            uids.add(d["user"])
        if d.get("customer"):
            ext.add(d["customer"])
        if d.get("email"):
            emails.add(d["email"])
        if d.get("plan"):
            plans.add(f"pp:{d['plan']}")
        for k in ("meta_plan", "plan_code"):
            if d.get(k):
                plans.add(f"code:{d[k]}")
    return sorted(uids), sorted(ext), sorted(emails), sorted(plans)
