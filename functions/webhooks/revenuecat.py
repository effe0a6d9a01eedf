"""RevenueCat events: their facts, and how a purchase's facts fold into its subscription.

A delivery is known by `event.id` (retries keep it) and placed by `event_timestamp_ms`.
The stream is the purchase (`original_transaction_id`); a TRANSFER names no purchase, only
users (`transferred_from` / `transferred_to`), and joins every stream whose events name one
of the users it moves from (by `app_user_id`, `original_app_user_id` or `aliases`): it is
folded into those purchases wherever it arrives, before or after them. Folding in
provider-time order means an event older than a TRANSFER can never move the purchase back.

| event | status | access until |
|---|---|---|
| INITIAL_PURCHASE, RENEWAL, UNCANCELLATION, SUBSCRIPTION_EXTENDED, TEMPORARY_ENTITLEMENT_GRANT, PRODUCT_CHANGE | active | expiration_at_ms |
| NON_RENEWING_PURCHASE | non_renewing | expiration_at_ms (none: lifetime) |
| CANCELLATION (auto-renew off, or a refund) | cancelled | expiration_at_ms |
| SUBSCRIPTION_PAUSED (takes effect at period end) | paused | expiration_at_ms |
| BILLING_ISSUE | past_due | the grace period's end, else expiration_at_ms |
| EXPIRATION | expired | (none) |
| TRANSFER | the purchase moves to the receiving user | |
| TEST, anything else | recorded, ignored | |

Users, per event: one of the event's ids that is a live account (verified by RevenueCat's
SDK login), then the purchase's owner, then an id learnt before (`billing_customers`). An
event whose users do not include the owner (without a TRANSFER in between) is `flagged`
with both ids and changes nothing. The tier is the plan's when the product is a
`subscription_plans` row (provider revenuecat), else `revenuecat_entitlement_tier` when
the event names an entitlement. With `revenuecat_verify`, the subscriber re-read from the
RevenueCat API enters the fold as a provider snapshot at the time it was fetched.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from functions.webhooks.delivery import FoldContext, Parsed, body_key, iso, parse_time
from functions.webhooks.models import RevenueCatEvent, RevenueCatWebhook
from functions.webhooks.queries import is_uuid
from functions.webhooks.settings import WebhooksSettings
from functions.webhooks.state import FOREVER, Fact, Folded, Result, Row, SubState, expand, order_key, parse_dt

PROVIDER = "revenuecat"
STATUS = {
    "INITIAL_PURCHASE": "active",
    "RENEWAL": "active",
    "PRODUCT_CHANGE": "active",
    "UNCANCELLATION": "active",
    "SUBSCRIPTION_EXTENDED": "active",
    "TEMPORARY_ENTITLEMENT_GRANT": "active",
    "NON_RENEWING_PURCHASE": "non_renewing",
    "CANCELLATION": "cancelled",
    "SUBSCRIPTION_PAUSED": "paused",
    "BILLING_ISSUE": "past_due",
    "EXPIRATION": "expired",
}
HANDLED = frozenset({*STATUS, "TRANSFER", "TEST"})
_KEPT = ("cancel_reason", "expiration_reason", "new_product_id", "auto_resume_at_ms", "period_type", "transaction_id",
         "store", "environment")


def parse(body: bytes) -> Parsed:
    from shared.envelope import has_nul, loads

    try:
        decoded = loads(body)
        hook = RevenueCatWebhook.model_validate(decoded)
    except (ValidationError, ValueError, TypeError) as exc:
        return Parsed(PROVIDER, body_key(body), invalid=f"not a RevenueCat event: {type(exc).__name__}")
    if has_nul(decoded):  # the raw body is kept (bytea); its text could not be stored or applied
        return Parsed(PROVIDER, body_key(body), invalid="text holds U+0000")
    e = hook.event
    subject = e.app_user_id or e.original_app_user_id or (e.transferred_to or [None])[0]
    at = parse_time(e.event_timestamp_ms)
    key = (e.id or body_key(body))[:500]
    kind = e.type or ""
    fact: dict[str, Any] | None = None
    stream = keys = None
    ignored = None
    if kind == "TRANSFER":
        src = [i for i in (e.transferred_from or []) if i]
        dst = [i for i in (e.transferred_to or []) if i]
        if src and dst:
            fact = {"kind": "transfer", "at": iso(at), "from": src, "to": dst}
            keys = [f"rc:{i}" for i in src]
        else:
            ignored = "a TRANSFER that names no users"
    elif kind in STATUS:
        ref = e.original_transaction_id or e.transaction_id
        if ref:
            ids = candidates(e)
            fact = {"kind": "rc", "type": kind, "at": iso(at), "ids": ids, "product": e.product_id,
                    "expires": e.expiration_at_ms, "grace": e.grace_period_expiration_at_ms,
                    "entitled": bool(e.entitlement_ids or e.entitlement_id),
                    "sandbox": (e.environment or "").upper() == "SANDBOX",
                    **{k: getattr(e, k) for k in _KEPT if getattr(e, k) is not None}}
            stream, keys = f"otx:{ref}", [f"rc:{i}" for i in ids]
        else:
            ignored = f"{kind} without a transaction id"
    else:
        ignored = f"{kind or 'an untyped event'} is recorded, not acted on"
    return Parsed(PROVIDER, key, e.type, at, subject, hook, fact=fact, stream=stream, keys=keys, ignored=ignored)


def wants_reread(p: Parsed, settings: WebhooksSettings) -> bool:
    """Re-read the subscriber before applying (configured, and the event changes state)."""
    return settings.revenuecat_verify and p.event is not None and p.event_type in STATUS


def candidates(e: RevenueCatEvent) -> list[str]:
    ids = [e.app_user_id, e.original_app_user_id, *(e.aliases or [])]
    return list(dict.fromkeys(i for i in ids if i))


def snapshot(remote: dict[str, Any], fetched_at: datetime, named: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The subscriber as the RevenueCat API saw it at `fetched_at`: each product's status
    and period end, the provider snapshot the fold applies at that time (None: the answer
    names no product). Every product, not only the event's: after a PRODUCT_CHANGE the
    purchase lives on under the new product, and the fold picks the one its events name
    that runs longest (`_current`). The products the event names (`named`) first, so a
    subscriber with more than `MAX_SNAPSHOT_PRODUCTS` never loses them."""
    subs = ((remote or {}).get("subscriber") or {}).get("subscriptions") or {}
    if not isinstance(subs, dict):
        return None
    order = [*(p for p in named if p in subs), *(p for p in subs if p not in named)][:MAX_SNAPSHOT_PRODUCTS]
    products = {}
    for product_id in order:
        info = subs[product_id]
        if isinstance(info, dict) and isinstance(product_id, str):
            products[product_id] = _product_state(info, fetched_at)
    return {"at": iso(fetched_at), "products": products} if products else None


#: a subscriber's products kept from one answer (an app sells a handful)
MAX_SNAPSHOT_PRODUCTS = 50


def _product_state(info: dict[str, Any], fetched_at: datetime) -> dict[str, Any]:
    end = parse_time(info.get("expires_date"))
    grace = parse_time(info.get("grace_period_expires_date"))
    if grace is not None and (end is None or grace > end):
        end = grace
    if end is not None and end <= fetched_at:
        status = "expired"
    elif info.get("billing_issues_detected_at"):
        status = "past_due"
    elif info.get("unsubscribe_detected_at"):
        status = "cancelled"
    else:
        status = "active"
    return {"status": status, "period_end": iso(end)}


def _current(snap: dict[str, Any], products: set[str]) -> dict[str, Any] | None:
    """What a snapshot says about this purchase: of the products its events name, the one
    whose period runs longest (no end: never expires). A snapshot stored before answers
    were kept per product says it directly."""
    if "products" not in snap:
        return snap
    named = [v for k, v in snap["products"].items() if k in products]
    if not named:
        return None
    never = datetime.min.replace(tzinfo=UTC)
    return max(named, key=lambda v: (v.get("period_end") is None, parse_dt(v.get("period_end")) or never))


def with_truth(fact: dict[str, Any], remote: Any) -> None:
    """REVENUECAT_VERIFY: the subscriber as read (truth.Snapshot) rides on the fact, folded
    as a provider snapshot at its fetch time."""
    named = tuple(p for p in (fact.get("product"), fact.get("new_product_id")) if isinstance(p, str))
    snap = snapshot(getattr(remote, "data", remote), getattr(remote, "fetched_at", None) or datetime.now(UTC), named)
    if snap is not None:
        fact["snapshot"] = snap


# -- the fold ------------------------------------------------------------------------------


def _users(ctx: FoldContext, ids: list[str]) -> list[str]:
    out: list[str] = []
    for i in ids:
        u = ctx.users.get(f"uid:{i}") if is_uuid(i) else None
        u = u or ctx.users.get(f"ext:{i}")
        if u and u not in out:
            out.append(u)
    return out


def fold(facts: list[Fact], ctx: FoldContext, stream: str = "") -> Folded:
    out = Folded()
    row = Row(stream.removeprefix("otx:"))
    products = {p for f in facts for p in (f.data.get("product"), f.data.get("new_product_id")) if p}
    for f in sorted(expand(facts), key=order_key):
        if f.kind == "provider_snapshot":
            said = _current(f.data, products)
            if row.owner is not None and said is not None:
                s = row.state
                row.state = SubState(said["status"], s.tier, s.plan_code, parse_dt(said.get("period_end")),
                                     s.last_event_at, {**s.metadata, "verified_at": f.data["at"]})
                row.touch(f)
            continue
        out.results[f.delivery_id] = _transfer(row, f, ctx) if f.kind == "transfer" else _event(row, f, ctx, out)
    if row.owner is not None:
        out.rows[row.ref] = row
    return out


def _transfer(row: Row, f: Fact, ctx: FoldContext) -> Result:
    to = _users(ctx, f.data["to"])
    if not to:
        return Result("pending", "unknown receiving user: waiting for the account")
    src = set(_users(ctx, f.data["from"]))
    if row.owner is None or row.owner not in src:
        return Result("applied", "nothing of theirs to move in this purchase at that time", to[0], row.ref)
    if row.owner != to[0]:
        row.state = SubState(**{**_fields(row.state), "metadata": {**row.state.metadata, "transferred_from": row.owner}})
    row.owner = to[0]
    row.touch(f)
    return Result("applied", None, to[0], row.ref)


def _event(row: Row, f: Fact, ctx: FoldContext, out: Folded) -> Result:
    d = f.data
    if d.get("sandbox") and not ctx.allow_sandbox:
        return Result("ignored", "sandbox events are not applied here")
    users = _users(ctx, d.get("ids") or [])
    if row.owner is not None and users and row.owner not in users:
        return Result("flagged", f"owner conflict: purchase {row.ref} belongs to {row.owner}, this event names "
                                 f"{users[0]}: nothing changed", users[0], row.ref)
    user = row.owner or (users[0] if users else None)
    if user is None:
        return Result("pending", "unknown user: waiting for the account")
    if row.owner is None:
        row.owner = user
    for i in d.get("ids") or []:
        if not is_uuid(i):
            out.learnt.setdefault(i, user)
    kind = d["type"]
    end = parse_time(d.get("expires"))
    if kind == "BILLING_ISSUE":
        end = parse_time(d.get("grace")) or end
    elif kind == "NON_RENEWING_PURCHASE" and end is None:
        end = FOREVER
    product = d.get("product")
    plan = ctx.plans.get(f"pp:{product}") if product else None
    tier = plan.tier if plan else (ctx.entitlement_tier if d.get("entitled") else "free")
    # what this event says (not accumulated: an older event's details never outlive it)
    meta = {"product_id": product, "last_event": kind, **{k: d[k] for k in _KEPT if d.get(k) is not None}}
    if "transferred_from" in row.state.metadata:
        meta["transferred_from"] = row.state.metadata["transferred_from"]
    row.state = SubState(STATUS[kind], tier, plan.code if plan else product, end, f.at, meta)
    row.touch(f)
    return Result("applied", None, user, row.ref)


def _fields(s: SubState) -> dict[str, Any]:
    return {"status": s.status, "tier": s.tier, "plan_code": s.plan_code,
            "current_period_end": s.current_period_end, "last_event_at": s.last_event_at, "metadata": s.metadata}


def identifiers(facts: list[Fact]) -> tuple[list[str], list[str], list[str], list[str]]:
    ids: set[str] = set()
    plans: set[str] = set()
    for f in facts:
        ids.update(f.data.get("ids") or [])
        ids.update(f.data.get("from") or [])
        ids.update(f.data.get("to") or [])
        if f.data.get("product"):
            plans.add(f"pp:{f.data['product']}")
    return sorted(i for i in ids if is_uuid(i)), sorted(ids), [], sorted(plans)
