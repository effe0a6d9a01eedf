"""`edgefn webhooks trigger <paystack|revenuecat> <event>`: a realistic, signed delivery of one
provider event to a local server, as `stripe trigger` sends one to a Stripe endpoint.

    edgefn webhooks trigger paystack charge.success               # to the `edgefn dev` in .edgefn
    edgefn webhooks trigger paystack refund.processed --user <uuid>
    edgefn webhooks trigger revenuecat TRANSFER --to <uuid>
    edgefn webhooks trigger revenuecat RENEWAL --url http://127.0.0.1:8000 --data-dir .edgefn

The body is built by `functions.webhooks.samples` from the provider's documented shape and
signed the provider's way: Paystack's `x-paystack-signature` (HMAC-SHA512 of the body with
PAYSTACK_SECRET_KEY), RevenueCat's Authorization value (REVENUECAT_WEBHOOK_AUTH). The
secrets and the server's address come from the `edgefn dev` running in `--data-dir`
(its dev.json), else from the environment; `--url` names another server (its base, or the
route itself).

Like `stripe trigger`, an event that needs others before it (a refund needs its charge, a
renewal its purchase) gets them first, with fresh ids each run, so the event itself is
fresh and applies: `invoice.update` is sent after a `charge.success` and a
`subscription.create` of the same customer. Each delivery's outcome is printed; the last
line is the triggered event's, with the reason the server stored when it was not applied
(read from the dev server's database):

    setup paystack charge.success: applied (delivery 41)
    paystack refund.processed: applied (delivery 42)
    paystack charge.success: flagged (delivery 43): charge for an unknown plan PLN_x: nothing granted

Paystack events pay for the demo plan `pro_monthly` (PLN_demo_pro_monthly, NGN 2,000) and
RevenueCat events buy `com.edgefn.demo.pro_monthly`, the plans `edgefn dev` registers
(edgefn/plans.py); give `--plan-code`/`--amount` or `--product` for your own.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit
from datetime import UTC, datetime, timedelta
from typing import Any

from edgefn.cli import CommandError

DEMO_USER_ID = "00000000-0000-4000-8000-000000000001"
#: the seeded user a RevenueCat TRANSFER moves the purchase to, unless --to
DEMO_TRANSFER_TO = "00000000-0000-4000-8000-000000000002"
PAYSTACK_PLAN = ("PLN_demo_pro_monthly", 200000, "NGN")
REVENUECAT_PRODUCT = "com.edgefn.demo.pro_monthly"
REVENUECAT_NEW_PRODUCT = "com.edgefn.demo.pro_yearly"

#: what each event needs sent before it (the issue's lifecycles, every event triggerable)
PAYSTACK_SETUP: dict[str, tuple[str, ...]] = {
    "charge.success": (),
    "subscription.create": ("charge.success",),
    "invoice.create": ("charge.success", "subscription.create"),
    "invoice.payment_failed": ("charge.success", "subscription.create"),
    "invoice.update": ("charge.success", "subscription.create"),
    "subscription.not_renew": ("charge.success", "subscription.create"),
    "refund.processed": ("charge.success",),
    "subscription.disable": ("charge.success", "subscription.create"),
}
REVENUECAT_SETUP: dict[str, tuple[str, ...]] = {
    "TEST": (),
    "INITIAL_PURCHASE": (),
    "NON_RENEWING_PURCHASE": (),
    "PRODUCT_CHANGE": ("INITIAL_PURCHASE",),
    "RENEWAL": ("INITIAL_PURCHASE",),
    "CANCELLATION": ("INITIAL_PURCHASE",),
    "UNCANCELLATION": ("INITIAL_PURCHASE", "CANCELLATION"),
    "BILLING_ISSUE": ("INITIAL_PURCHASE",),
    "SUBSCRIPTION_PAUSED": ("INITIAL_PURCHASE",),
    "EXPIRATION": ("INITIAL_PURCHASE",),
    "TRANSFER": ("INITIAL_PURCHASE",),
}
EVENTS = {"paystack": PAYSTACK_SETUP, "revenuecat": REVENUECAT_SETUP}
ROUTE = "/functions/v1/webhooks/"


@dataclass(frozen=True)
class Sent:
    event: str
    status: int
    outcome: str | None
    delivery_id: int | None
    duplicate: bool
    body: str

    def line(self, provider: str, setup: bool) -> str:
        head = f"{'setup ' if setup else ''}{provider} {self.event}"
        if self.outcome is None:
            return f"{head}: HTTP {self.status} {self.body[:300]}"
        dup = ", a duplicate" if self.duplicate else ""
        return f"{head}: {self.outcome} (delivery {self.delivery_id}{dup})"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("provider", choices=tuple(EVENTS), help="paystack or revenuecat")
    p.add_argument("event", help="the event: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in EVENTS.items()))
    p.add_argument("--user", default=DEMO_USER_ID, help=f"our user id the delivery is for (default the demo user {DEMO_USER_ID})")
    p.add_argument("--to", default=DEMO_TRANSFER_TO, help=f"RevenueCat TRANSFER: the receiving user (default {DEMO_TRANSFER_TO})")
    p.add_argument("--url", default=None,
                   help="the server (http://127.0.0.1:8000) or the route itself (default: the `edgefn dev` in --data-dir)")
    p.add_argument("--data-dir", default=".edgefn", help="the data folder of a running `edgefn dev` (default .edgefn)")
    p.add_argument("--plan-code", default=PAYSTACK_PLAN[0], help=f"Paystack plan code (default {PAYSTACK_PLAN[0]})")
    p.add_argument("--amount", type=int, default=PAYSTACK_PLAN[1],
                   help=f"Paystack amount in the minor unit (default {PAYSTACK_PLAN[1]}, the demo plan's price)")
    p.add_argument("--currency", default=PAYSTACK_PLAN[2], help=f"Paystack currency (default {PAYSTACK_PLAN[2]})")
    p.add_argument("--product", default=REVENUECAT_PRODUCT, help=f"RevenueCat product id (default {REVENUECAT_PRODUCT})")
    p.add_argument("--json", action="store_true", help="print each delivery's answer as a JSON line")
    p.add_argument("--allow-remote", action="store_true",
                   help="send to a server that is not on this machine (a staging stack): the deliveries are "
                        "signed with real secrets and grant real tiers there")


def run(args: argparse.Namespace) -> int:
    provider, event = args.provider, args.event
    if event not in EVENTS[provider]:
        raise CommandError(f"unknown {provider} event {event!r}: one of {', '.join(EVENTS[provider])}")
    url, secret = _target(args)
    bodies = build(provider, event, args)
    import httpx

    results: list[Sent] = []
    with httpx.Client(timeout=30) as client:
        for name, body in bodies:
            raw = json.dumps(body, separators=(",", ":")).encode()
            headers = {"content-type": "application/json", "user-agent": "edgefn-webhooks-trigger"}
            if provider == "paystack":
                from functions.webhooks.samples import paystack_signature

                headers["x-paystack-signature"] = paystack_signature(raw, secret)
            else:
                headers["authorization"] = secret
            try:
                resp = client.post(url, content=raw, headers=headers)
            except httpx.HTTPError as exc:
                raise CommandError(f"cannot reach {url}: {type(exc).__name__}: {exc} (is `edgefn dev` running?)") from None
            sent = _read(name, resp)
            results.append(sent)
            last = len(results) == len(bodies)
            why = _why(args, sent)
            if args.json:
                print(json.dumps({"event": name, "setup": not last, "status": sent.status, "outcome": sent.outcome,
                                  "delivery_id": sent.delivery_id, "duplicate": sent.duplicate, "reason": why}),
                      flush=True)
            else:
                print(sent.line(provider, setup=not last) + (f": {why}" if why else ""), flush=True)
            if sent.outcome is None:
                raise CommandError(f"{url} answered {sent.status} to {provider} {name}"
                                   + (": the secret does not match the server's" if sent.status in (401, 403) else ""))
    return 0


#: outcomes the server stores a reason for (webhook_deliveries.error)
EXPLAINED = ("flagged", "pending", "failed", "invalid")


def _why(args: argparse.Namespace, sent: Sent) -> str | None:
    """The stored reason a delivery was not applied ("unknown user ...", "no plan ..."), read
    from the database of the `edgefn dev` in --data-dir (or DATABASE_URL); None when neither
    is at hand: the answer to the provider carries only the outcome."""
    if sent.outcome not in EXPLAINED or sent.delivery_id is None or sent.duplicate:
        return None
    from edgefn import devstate

    dsn = os.environ.get("DATABASE_URL") or (devstate.read(args.data_dir) or {}).get("database_url")
    if not dsn:
        return None
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute("select error from public.webhook_deliveries where id = %s",
                               (sent.delivery_id,)).fetchone()
    except Exception:  # the reason is a courtesy: the outcome above is the answer
        return None
    return str(row[0]) if row and row[0] else None


def _read(name: str, resp: Any) -> Sent:
    try:
        data = resp.json().get("data") or {}
    except ValueError:
        data = {}
    ok = resp.status_code == 200 and "outcome" in data
    return Sent(name, resp.status_code, data.get("outcome") if ok else None, data.get("delivery_id"),
                bool(data.get("duplicate")), resp.text)


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """(the route's URL, the secret): --url / the running dev server / the environment."""
    from edgefn import devstate

    running = devstate.read(args.data_dir) or {}
    key = "PAYSTACK_SECRET_KEY" if args.provider == "paystack" else "REVENUECAT_WEBHOOK_AUTH"
    secret = (running.get("webhooks") or {}).get(key) if not args.url else None
    secret = os.environ.get(key) or secret
    if not secret and args.url:  # another server, but maybe a dev one's secrets are at hand
        secret = (running.get("webhooks") or {}).get(key)
    if not secret:
        raise CommandError(f"no {key}: set it as the server has it, or start `edgefn dev` (--data-dir {args.data_dir})")
    base = args.url or running.get("url")
    if not base:
        raise CommandError(f"no server: no `edgefn dev` is running with --data-dir {args.data_dir} (start it, or pass --url)")
    base = base.rstrip("/")
    host = urlsplit(base).hostname or ""
    if not args.allow_remote and host not in ("localhost", "127.0.0.1", "::1"):
        raise CommandError(f"{base} is not on this machine: trigger sends correctly signed deliveries that grant "
                           f"real tiers; pass --allow-remote if that is what you want")
    url = base if base.endswith((f"{ROUTE}paystack", f"{ROUTE}revenuecat")) else f"{base}{ROUTE}{args.provider}"
    return url, secret


# -- the bodies ------------------------------------------------------------------------------


def build(provider: str, event: str, args: argparse.Namespace, *, now: datetime | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The bodies to send, setup first, the triggered event last; fresh ids each call."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    if provider == "paystack":
        return _paystack(event, args, now)
    return _revenuecat(event, args, now)


def _paystack(event: str, args: argparse.Namespace, now: datetime) -> list[tuple[str, dict[str, Any]]]:
    from functions.webhooks.samples import PaystackIds, paystack_event

    ids = PaystackIds.fresh(args.user, email=f"{args.user}@example.com", plan_code=args.plan_code, amount=args.amount)
    paid = now - timedelta(minutes=2)  # the first payment
    created = paid + timedelta(seconds=4)  # the subscription Paystack makes from it
    common = {"customer_code": ids.customer_code, "email": ids.email, "plan_code": ids.plan_code,
              "amount": ids.amount, "currency": args.currency, "subscription_code": ids.subscription_code}
    renewal_due = paid + timedelta(days=30)
    make = {
        "charge.success": lambda: paystack_event("charge.success", at=paid, user_id=ids.user_id,
                                                 reference=ids.first_reference, **common),
        "subscription.create": lambda: paystack_event("subscription.create", at=created, next_payment=renewal_due,
                                                      **common),
        "invoice.create": lambda: paystack_event("invoice.create", at=now, invoice_code=ids.invoice_code,
                                                 next_payment=renewal_due, **common),
        "invoice.payment_failed": lambda: paystack_event("invoice.payment_failed", at=now, invoice_code=ids.invoice_code,
                                                         next_payment=renewal_due, **common),
        # a renewal paid now (as if the period had come round): the next one is due a month on
        "invoice.update": lambda: paystack_event("invoice.update", at=now, invoice_code=ids.invoice_code,
                                                 reference=ids.renewal_reference,
                                                 next_payment=now + timedelta(days=30), **common),
        "subscription.not_renew": lambda: paystack_event("subscription.not_renew", at=created,
                                                         next_payment=renewal_due, **common),
        "refund.processed": lambda: paystack_event("refund.processed", at=now, reference=ids.first_reference,
                                                   refund_reference=ids.refund_reference, **common),
        "subscription.disable": lambda: paystack_event("subscription.disable", at=created, **common),
    }
    return [(name, make[name]()) for name in (*PAYSTACK_SETUP[event], event)]


def _revenuecat(event: str, args: argparse.Namespace, now: datetime) -> list[tuple[str, dict[str, Any]]]:
    from functions.webhooks.samples import RevenueCatIds, revenuecat_event

    ids = RevenueCatIds.fresh(args.user, args.to, product_id=args.product)
    bought = now - timedelta(minutes=2)
    steps = (*REVENUECAT_SETUP[event], event)

    def ev(kind: str, at: datetime, **kw: Any) -> dict[str, Any]:
        return revenuecat_event(kind, app_user_id=ids.user_id, at=at, product_id=ids.product_id,
                                original_transaction_id=ids.original_transaction_id,
                                aliases=[ids.user_id, ids.anonymous_id], **kw)

    month = timedelta(days=30)
    make = {
        "TEST": lambda: ev("TEST", now),
        "INITIAL_PURCHASE": lambda: ev("INITIAL_PURCHASE", bought, expires=bought + month),
        "NON_RENEWING_PURCHASE": lambda: ev("NON_RENEWING_PURCHASE", now),
        "PRODUCT_CHANGE": lambda: ev("PRODUCT_CHANGE", now, expires=bought + month,
                                     new_product_id=REVENUECAT_NEW_PRODUCT),
        "RENEWAL": lambda: ev("RENEWAL", now, expires=now + month),
        # UNCANCELLATION follows its CANCELLATION: that one a minute earlier
        "CANCELLATION": lambda: ev("CANCELLATION", now - timedelta(minutes=1) if event == "UNCANCELLATION" else now,
                                   expires=bought + month),
        "UNCANCELLATION": lambda: ev("UNCANCELLATION", now, expires=bought + month),
        "BILLING_ISSUE": lambda: ev("BILLING_ISSUE", now, expires=bought + month, grace_until=now + timedelta(days=7)),
        "SUBSCRIPTION_PAUSED": lambda: ev("SUBSCRIPTION_PAUSED", now, expires=bought + month),
        "EXPIRATION": lambda: ev("EXPIRATION", now, expires=now),
        "TRANSFER": lambda: revenuecat_event("TRANSFER", app_user_id=None, at=now, event_id=str(uuid.uuid4()).upper(),
                                             transferred_from=[ids.user_id], transferred_to=[ids.to_user_id]),
    }
    return [(name, make[name]()) for name in steps]
