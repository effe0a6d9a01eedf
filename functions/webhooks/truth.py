"""The provider's own answer, as an option: a webhook is a notification, not a command.

With `PAYSTACK_VERIFY` / `REVENUECAT_VERIFY`, before a delivery is applied the object it
is about is read back from the provider's API, and what the provider answers is applied
(not the body):

| provider | event | read | what is taken from the answer |
|---|---|---|---|
| Paystack | `charge.success` | `GET /transaction/verify/:reference` | `status` (only `success` grants), `amount`, `currency`, `plan` |
| Paystack | `subscription.*`, `invoice.*` | `GET /subscription/:code` | `status`, `next_payment_date` (the paid period's end) |
| RevenueCat | every state-changing event | `GET /v1/subscribers/:app_user_id` | the product's `expires_date`, grace period, unsubscribe and billing-issue marks |

Paystack is read with the secret key as a Bearer token (`PAYSTACK_SECRET_KEY`, the key that
signs its deliveries), RevenueCat with `REVENUECAT_API_KEY`. Each read runs through the
shared outbound client: its own deadline (`*_API_TIMEOUT_S`, at most half the delivery's
deadline) and a circuit breaker per provider (BREAKER_FAILURE_THRESHOLD consecutive failures
open it for BREAKER_RESET_SECONDS; while open, reads fail at once). A read that fails (the
deadline, the breaker, a 5xx, an answer that is not the documented shape) does not hold the
delivery back: the body is applied, as without the option, and the delivery is queued for
verification (`public.webhook_verify_pending`). Reconciliation (the scheduled job,
`edgefn webhooks replay --pending`) reads the provider again and applies its answer.

Response shapes: Paystack's API reference (PaystackOSS/doc-code-snippets
`src/api/transactions/verify/response.json`, `src/api/subscriptions/fetch/response.json`:
`{"status": true, "message": ..., "data": {...}}`); RevenueCat's `GET /v1/subscribers`
(`{"request_date_ms": ..., "subscriber": {"subscriptions": {product_id: {...}}}}`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from functions.webhooks.delivery import Parsed, parse_time
from shared import errors
from shared.observability import metrics

if TYPE_CHECKING:
    from functions.webhooks.settings import WebhooksSettings
    from shared.services import Services

#: Paystack's subscription statuses (its "subscription status" docs: active, non-renewing,
#: attention = the last charge failed, completed = no charges left, cancelled) in ours
PAYSTACK_STATUS = {"active": "active", "non-renewing": "non_renewing", "attention": "past_due",
                   "completed": "cancelled", "complete": "cancelled", "cancelled": "cancelled"}
#: state-changing events whose object is read back
PAYSTACK_TRANSACTION_EVENTS = frozenset({"charge.success"})
PAYSTACK_SUBSCRIPTION_EVENTS = frozenset({
    "subscription.create", "subscription.not_renew", "subscription.disable",
    "invoice.create", "invoice.update", "invoice.payment_failed",
})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the provider answered for one object, read at `fetched_at`."""

    provider: str
    #: "transaction" (Paystack), "subscription" (Paystack), "subscriber" (RevenueCat)
    kind: str
    #: the reference, subscription code or app user id that was read
    key: str
    fetched_at: datetime
    #: the provider's object as answered (Paystack's `data`, RevenueCat's whole answer)
    data: dict[str, Any] = field(default_factory=dict)
    #: our status for it (subscriptions), None when the answer does not say
    status: str | None = None
    #: the end of the paid period the provider reports
    period_end: datetime | None = None
    #: a transaction's amount and currency, and whether it succeeded
    amount: int | None = None
    currency: str | None = None
    paid: bool | None = None
    #: the provider's plan code / product id
    plan_code: str | None = None


@dataclass(frozen=True, slots=True)
class Reread:
    """The outcome of asking: `snapshot`, or `error` (why it failed), or neither when no
    read was wanted for this delivery."""

    snapshot: Snapshot | None = None
    error: str | None = None

    @property
    def wanted(self) -> bool:
        return self.snapshot is not None or self.error is not None


NOT_WANTED = Reread()


def target(settings: WebhooksSettings, p: Parsed) -> tuple[str, str] | None:
    """(kind, key) of the object to read for this delivery, or None (not configured, not an
    event that changes state, or the body names no object)."""
    if p.event is None or p.invalid:
        return None
    if p.provider == "paystack":
        if not settings.paystack_verify:
            return None
        d = p.event.data
        if p.event_type in PAYSTACK_TRANSACTION_EVENTS and d.reference:
            return "transaction", d.reference
        if p.event_type in PAYSTACK_SUBSCRIPTION_EVENTS:
            code = d.subscription_code if (p.event_type or "").startswith("subscription.") else \
                (d.subscription or {}).get("subscription_code")
            return ("subscription", code) if code else None
        return None
    from functions.webhooks import revenuecat

    if not revenuecat.wants_reread(p, settings):
        return None
    e = p.event.event
    user = e.app_user_id or e.original_app_user_id
    return ("subscriber", user) if user else None


async def reread(services: Services, settings: WebhooksSettings, p: Parsed) -> Reread:
    """Read the delivery's object from its provider, under the deadline and the breaker."""
    want = target(settings, p)
    if want is None:
        return NOT_WANTED
    kind, key = want
    try:
        if p.provider == "paystack":
            snap = await _paystack(services, settings, kind, key)
        else:
            snap = await _revenuecat(services, settings, key)
    except _Failed as exc:
        metrics.incr(f"webhooks.reread_failed.{p.provider}")
        return Reread(error=str(exc))
    metrics.incr(f"webhooks.reread.{p.provider}")
    return Reread(snapshot=snap)


class _Failed(Exception):
    pass


async def _get(services: Services, provider: str, url: str, token: str, timeout: float) -> Any:
    try:
        resp = await services.outbound.request(
            provider, "GET", url, timeout=timeout,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
    except errors.ServiceUnavailable as exc:  # the deadline, unreachable, the breaker open
        raise _Failed(f"{exc.code}: {exc.message}") from None
    if resp.status_code != 200:
        raise _Failed(f"{provider} answered {resp.status_code}")
    try:
        return resp.json()
    except ValueError:
        raise _Failed(f"{provider} answered something that is not JSON") from None


def _deadline(settings: WebhooksSettings, own: float) -> float:
    return min(own, settings.webhook_deadline_s / 2)


async def _paystack(services: Services, settings: WebhooksSettings, kind: str, key: str) -> Snapshot:
    secret = settings.paystack_secret_key
    if not secret:
        raise _Failed("PAYSTACK_SECRET_KEY is not configured")
    base = settings.paystack_api_url.rstrip("/")
    path = f"/transaction/verify/{quote(key, safe='')}" if kind == "transaction" else f"/subscription/{quote(key, safe='')}"
    answer = await _get(services, "paystack", base + path, secret, _deadline(settings, settings.paystack_api_timeout_s))
    data = answer.get("data") if isinstance(answer, dict) and answer.get("status") is True else None
    if not isinstance(data, dict):
        raise _Failed(f"Paystack's answer to {path} has no data")
    now = datetime.now(UTC)
    if kind == "transaction":
        amount = data.get("amount")
        plan = data.get("plan") if isinstance(data.get("plan"), dict) else data.get("plan_object")
        return Snapshot(
            "paystack", kind, key, now, data, paid=str(data.get("status") or "").lower() == "success",
            amount=int(amount) if isinstance(amount, (int, str)) and str(amount).isdigit() else None,
            currency=(data.get("currency") or None),
            plan_code=(plan or {}).get("plan_code") if isinstance(plan, dict) else (plan if isinstance(plan, str) else None),
        )
    raw = str(data.get("status") or "").lower()
    plan = data.get("plan")
    return Snapshot(
        "paystack", kind, key, now, data, status=PAYSTACK_STATUS.get(raw),
        period_end=parse_time(data.get("next_payment_date")),
        amount=data.get("amount") if isinstance(data.get("amount"), int) else None,
        plan_code=plan.get("plan_code") if isinstance(plan, dict) else None,
    )


async def _revenuecat(services: Services, settings: WebhooksSettings, user: str) -> Snapshot:
    if not settings.revenuecat_api_key:
        raise _Failed("REVENUECAT_API_KEY is not configured")
    url = f"{settings.revenuecat_api_url.rstrip('/')}/v1/subscribers/{quote(user, safe='')}"
    answer = await _get(services, "revenuecat", url, settings.revenuecat_api_key,
                        _deadline(settings, settings.revenuecat_api_timeout_s))
    if not isinstance(answer, dict) or not isinstance(answer.get("subscriber"), dict):
        raise _Failed("RevenueCat's answer has no subscriber")
    return Snapshot("revenuecat", "subscriber", user, datetime.now(UTC), answer)
