"""RevenueCat events: what each one means for a subscription.

A delivery is known by `event.id` (retries keep it) and ordered by `event_timestamp_ms`:
an event older than the newest one applied to its subscription is recorded as `stale` and
changes nothing (a CANCELLATION that arrives two hours late never overwrites a newer
RENEWAL). A subscription is keyed by its original transaction id. Users are found by
`app_user_id`, `original_app_user_id` or any of `aliases` (our user ids directly, or ids
seen before beside one); TRANSFER names them in `transferred_to` / `transferred_from`.

| event | status | access until |
|---|---|---|
| INITIAL_PURCHASE, RENEWAL, UNCANCELLATION, SUBSCRIPTION_EXTENDED, TEMPORARY_ENTITLEMENT_GRANT, PRODUCT_CHANGE | active | expiration_at_ms |
| NON_RENEWING_PURCHASE | non_renewing | expiration_at_ms (none: lifetime) |
| CANCELLATION (auto-renew off, or a refund) | cancelled | expiration_at_ms |
| SUBSCRIPTION_PAUSED (takes effect at period end) | paused | expiration_at_ms |
| BILLING_ISSUE | past_due | the grace period's end, else expiration_at_ms |
| EXPIRATION | expired | (none) |
| TRANSFER | the subscriptions move to the receiving user | |
| TEST, anything else | recorded, ignored | |

The tier is the plan's when the product is a `subscription_plans` row (provider
revenuecat), else `revenuecat_entitlement_tier` when the event names an entitlement.
With `revenuecat_verify`, the subscriber is re-read from the RevenueCat API first and its
answer (expiry, unsubscribe, billing issue) is applied as the current truth.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from functions.webhooks.delivery import Applied, Parsed, body_key, parse_time
from functions.webhooks.models import RevenueCatEvent, RevenueCatWebhook
from functions.webhooks.queries import Store, is_uuid
from functions.webhooks.settings import WebhooksSettings
from functions.webhooks.state import FOREVER, Change, reduce

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
    return Parsed(PROVIDER, (e.id or body_key(body))[:500], e.type, parse_time(e.event_timestamp_ms), subject, hook)


def wants_reread(p: Parsed, settings: WebhooksSettings) -> bool:
    """Re-read the subscriber before applying (configured, and the event changes state)."""
    return settings.revenuecat_verify and p.event is not None and p.event_type in STATUS


def candidates(e: RevenueCatEvent) -> list[str]:
    ids = [e.app_user_id, e.original_app_user_id, *(e.aliases or [])]
    return list(dict.fromkeys(i for i in ids if i))


async def apply(store: Store, p: Parsed, at: datetime, settings: WebhooksSettings, remote: Any = None) -> Applied:
    e: RevenueCatEvent = p.event.event
    kind = e.type or ""
    if kind not in HANDLED or kind == "TEST":
        return Applied("ignored", f"{kind or 'an untyped event'} is recorded, not acted on")
    if (e.environment or "").upper() == "SANDBOX" and not settings.revenuecat_allow_sandbox:
        return Applied("ignored", "sandbox events are not applied here")
    if kind == "TRANSFER":
        return await _transfer(store, e, at)
    ids = candidates(e)
    user, plan = await store.user_and_plan(PROVIDER, user_ids=ids, external_ids=ids,
                                           learn=[i for i in ids if not is_uuid(i)], provider_plan_code=e.product_id)
    if user is None:
        return Applied("pending", "unknown user: waiting for the account")
    ref = e.original_transaction_id or e.transaction_id
    if not ref:
        return Applied("flagged", f"{kind} without a transaction id", user_id=user)
    entitled = bool(e.entitlement_ids or e.entitlement_id)
    tier = plan.tier if plan else (settings.revenuecat_entitlement_tier if entitled else "free")
    change = _change(e, kind, at, tier, plan.code if plan else e.product_id)
    if remote is not None:  # a truth.Snapshot of the subscriber (REVENUECAT_VERIFY)
        change = _verified(change, getattr(remote, "data", remote), e.product_id)
    sub = await store.lock_subscription(PROVIDER, ref, user)
    t = reduce(sub.state, change)
    applied = Applied("stale" if t.stale and t.before == t.after else "applied", user_id=user, subscription_id=sub.id)
    applied.changes.append((sub, t))
    applied.users.add(user)
    if sub.user_id != user:  # the purchase now belongs to another of our users (aliases changed)
        applied.users.add(sub.user_id)
    if t.after != t.before or sub.user_id != user:
        store.save_subscription(sub, t.after, user_id=user)
    return applied


def _change(e: RevenueCatEvent, kind: str, at: datetime, tier: str, plan_code: str | None) -> Change:
    status = STATUS[kind]
    end = parse_time(e.expiration_at_ms)
    if kind == "BILLING_ISSUE":
        end = parse_time(e.grace_period_expiration_at_ms) or end
    elif kind == "NON_RENEWING_PURCHASE" and end is None:
        end = FOREVER
    meta: dict[str, Any] = {"product_id": e.product_id, "store": e.store, "environment": e.environment,
                            "last_event": kind, "app_user_id": e.app_user_id}
    for k in ("cancel_reason", "expiration_reason", "new_product_id", "auto_resume_at_ms", "period_type", "transaction_id"):
        v = getattr(e, k)
        if v is not None:
            meta[k] = v
    return Change(at, status=status, tier=tier, plan_code=plan_code, period_end=end, period_rule="set",
                  metadata={k: v for k, v in meta.items() if v is not None})


def _verified(change: Change, remote: dict[str, Any], product_id: str | None) -> Change:
    """The subscriber as the RevenueCat API sees it now, for this product, wins."""
    subs = ((remote or {}).get("subscriber") or {}).get("subscriptions") or {}
    info = subs.get(product_id or "")
    if not isinstance(info, dict):
        return change
    end = parse_time(info.get("expires_date"))
    grace = parse_time(info.get("grace_period_expires_date"))
    if grace is not None and (end is None or grace > end):
        end = grace
    now = datetime.now(UTC)
    if end is not None and end <= now:
        status = "expired"
    elif info.get("billing_issues_detected_at"):
        status = "past_due"
    elif info.get("unsubscribe_detected_at"):
        status = "cancelled"
    else:
        status = "active"
    return Change(change.event_at, status=status, status_rule="force", tier=change.tier, plan_code=change.plan_code,
                  period_end=end or change.period_end, period_rule="force",
                  metadata={**change.metadata, "verified_at": now.isoformat()})


async def _transfer(store: Store, e: RevenueCatEvent, at: datetime) -> Applied:
    to_ids = [i for i in (e.transferred_to or []) if i]
    from_ids = [i for i in (e.transferred_from or []) if i]
    target = await store.find_user(PROVIDER, user_ids=to_ids, external_ids=to_ids,
                                   learn=[i for i in to_ids if not is_uuid(i)], relearn=True)
    if target is None:
        return Applied("pending", "unknown receiving user: waiting for the account")
    sources = [u for u in await store.users_for(PROVIDER, from_ids) if u != target]
    moved = await store.move_subscriptions(PROVIDER, sources, target, at) if sources else 0
    applied = Applied("applied", None if moved else "nothing to move", user_id=target)
    applied.users.update({target, *sources})
    return applied
