"""One delivery, start to finish, the same for both providers:

1. authenticate (Paystack: the optional IP allow-list, then the HMAC-SHA512 signature of
   the raw body; RevenueCat: the Authorization value), all constant-time, before anything
   is parsed or written: a failure is a 401 (403 for the allow-list) and writes nothing;
2. parse (a correctly signed body that is not an event is stored as `invalid`);
3. with `paystack_verify` / `revenuecat_verify`: read the object back from the provider
   (truth.py), under its own deadline and the provider's circuit breaker; its answer
   enters the fold as a provider snapshot (state.py) riding on the delivery's fact; when
   the read fails the body is applied and the delivery queued in `webhook_verify_pending`
   (same transaction) for reconciliation to verify;
4. ONE service-role transaction, under a deadline: store the raw delivery (a unique key
   per provider makes a replay, or any number of concurrent copies, find the stored row
   and apply nothing), apply it, recompute each affected user's tier into
   `public.user_tiers`, enqueue `subscription.changed` for the realtime orchestrator, and
   write the tier to the rate limiter's Redis key while the user's tier row is still locked
   (so concurrent changes reach Redis in commit order). Redis failing does not fail the
   delivery: the tier is queued in `public.tier_sync_pending` (same transaction) and
   pushed again by reconciliation; until then the limiter's key keeps the old tier;
5. answer 200 with the outcome. The database unreachable or too slow: 503, so the
   provider retries; nothing is ever acknowledged that was not stored.

An unknown user is not an error: the delivery is stored as `pending`, answered 200, and
reconciliation (`reconcile`, the scheduled invocation, `edgefn webhooks replay --pending`)
applies it once the account exists.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any

from functions.webhooks import paystack, revenuecat
from functions.webhooks.delivery import Parsed
from functions.webhooks.models import WebhookAck
from functions.webhooks.queries import RETRYABLE, Store
from functions.webhooks.settings import WebhooksSettings
from functions.webhooks.verify import ip_allowed, paystack_signature_ok, revenuecat_auth_ok
from shared import errors
from shared.inputs import read_body
from shared.observability import json_log, metrics, sentry

if TYPE_CHECKING:
    from shared.context import RequestContext
    from shared.services import Services

PROVIDERS: dict[str, ModuleType] = {"paystack": paystack, "revenuecat": revenuecat}

#: request headers kept with a delivery (never the RevenueCat Authorization value: a secret)
KEPT_HEADERS = ("content-type", "content-length", "user-agent", "x-paystack-signature", "x-forwarded-for",
                "cloudfront-viewer-address", "x-request-id")


@dataclass(frozen=True, slots=True)
class Incoming:
    body: bytes
    headers: dict[str, str]
    received_at: datetime


@dataclass(slots=True)
class Result:
    delivery_id: int
    outcome: str
    duplicate: bool = False
    error: str | None = None
    #: user -> tier after this delivery
    tiers: dict[str, str] = field(default_factory=dict)


# -- the routes ------------------------------------------------------------------------


async def receive(ctx: RequestContext, provider: str) -> WebhookAck:
    started = time.perf_counter()
    settings: WebhooksSettings = ctx.settings  # type: ignore[assignment]
    headers = ctx.headers
    if provider == "paystack":
        secret = settings.paystack_secret_key
        if not secret:
            raise _not_configured("PAYSTACK_SECRET_KEY")
        if not ip_allowed(ctx.client_ip, settings.paystack_allowed_ips):
            metrics.incr("webhooks.ip_refused")
            raise errors.Forbidden("this address may not deliver Paystack events", code="IP_NOT_ALLOWED")
        body = await read_body(ctx.request, settings.webhook_max_body)
        if not paystack_signature_ok(secret, body, headers.get("x-paystack-signature")):
            metrics.incr("webhooks.bad_signature")
            raise errors.Unauthenticated("missing or invalid x-paystack-signature", code="INVALID_SIGNATURE")
    else:
        expected = settings.revenuecat_webhook_auth
        if not expected:
            raise _not_configured("REVENUECAT_WEBHOOK_AUTH")
        if not revenuecat_auth_ok(expected, headers.get("authorization")):
            metrics.incr("webhooks.bad_signature")
            raise errors.Unauthenticated("missing or invalid Authorization", code="INVALID_AUTHORIZATION")
        body = await read_body(ctx.request, settings.webhook_max_body)

    kept = {k: headers[k] for k in KEPT_HEADERS if k in headers}
    kept["client_ip"] = ctx.client_ip
    kept["request_id"] = ctx.request_id
    parsed = PROVIDERS[provider].parse(body)
    remote, remote_error = await reread(ctx.services, settings, parsed)
    left = settings.webhook_deadline_s - (time.perf_counter() - started)
    result = await run(ctx.services, settings, parsed, incoming=Incoming(body, kept, datetime.now(UTC)),
                       remote=remote, remote_error=remote_error, timeout=max(left, 0.1))
    metrics.incr(f"webhooks.{provider}.{'duplicate' if result.duplicate else result.outcome}")
    if result.outcome in ("flagged", "failed", "pending", "invalid") and not result.duplicate:
        json_log.log("warning", "webhook not applied", provider=provider, delivery_id=result.delivery_id,
                     outcome=result.outcome, error=result.error, request_id=ctx.request_id)
    return WebhookAck(delivery_id=result.delivery_id, outcome=result.outcome, duplicate=result.duplicate)


def _not_configured(key: str) -> errors.ServiceUnavailable:
    # our misconfiguration, not the provider's fault: a 503 makes it retry once we fix it
    return errors.ServiceUnavailable(f"{key} is not configured", code="WEBHOOK_NOT_CONFIGURED")


# -- the provider re-read ------------------------------------------------------------------


async def reread(services: Services, settings: WebhooksSettings, p: Parsed) -> tuple[Any, str | None]:
    """(the provider's Snapshot, None), or (None, why reading it failed), or (None, None) when
    no read is wanted (functions/webhooks/truth.py)."""
    from functions.webhooks import truth

    got = await truth.reread(services, settings, p)
    return got.snapshot, got.error


# -- one delivery in one transaction -------------------------------------------------------


async def run(
    services: Services, settings: WebhooksSettings, parsed: Parsed, *, incoming: Incoming | None = None,
    delivery_id: int | None = None, retry_only: bool = False, remote: Any = None, remote_error: str | None = None,
    timeout: float | None = None,
) -> Result:
    """Store (`incoming`) or re-open (`delivery_id`) a delivery and apply it, in one
    transaction. `retry_only`: leave it alone unless it is still pending or failed."""
    from psycopg import Error as PgError

    try:
        async with asyncio.timeout(timeout):
            return await _run(services, settings, parsed, incoming, delivery_id, retry_only, remote, remote_error)
    except errors.ServiceUnavailable as exc:  # the pool could not connect, and the like
        exc.headers.setdefault("Retry-After", "5")
        raise
    except TimeoutError:
        metrics.incr("webhooks.db_timeout")
        raise errors.DependencyTimeout("the database did not answer in time; retry", code="DATABASE_TIMEOUT",
                                       headers={"Retry-After": "5"}) from None
    except PgError as exc:  # anything the database layer did not already map: never a 200
        json_log.log("error", "webhook database error", error=repr(exc))
        raise errors.ServiceUnavailable("the database is unavailable; retry", code="DATABASE_UNAVAILABLE",
                                        headers={"Retry-After": "5"}) from exc


class _ApplyFailed(Exception):
    """Applying raised: the transaction is rolled back and the failure recorded on its own."""


async def _run(
    services: Services, settings: WebhooksSettings, p: Parsed, incoming: Incoming | None,
    delivery_id: int | None, retry_only: bool, remote: Any, remote_error: str | None,
) -> Result:
    try:
        return await _attempt(services, settings, p, incoming, delivery_id, retry_only, remote, remote_error)
    except _ApplyFailed as failed:
        exc = failed.__cause__ or failed
        sentry.capture(exc, function="webhooks", provider=p.provider)
        json_log.log("error", "webhook apply failed", provider=p.provider, dedupe_key=p.dedupe_key, error=repr(exc))
        return await _record_failure(services, p, incoming, delivery_id, f"{type(exc).__name__}: {exc}"[:500])


async def _open(store: Store, p: Parsed, incoming: Incoming | None, delivery_id: int | None,
                retry_only: bool, folds: bool = False) -> tuple[int, str, datetime, bool]:
    """(id, outcome so far, received_at, proceed) of the delivery, stored or re-opened
    (locked, unless it is a duplicate of a finished one), with its fact when it has one."""
    fact, stream, keys, waits = (p.fact, p.stream, p.keys, p.waits) if folds else (None, None, None, None)
    if incoming is not None:
        d = await store.record(p.provider, p.dedupe_key, p.event_type, p.event_at, incoming.received_at,
                               incoming.headers, incoming.body, p.subject, fact, stream, keys, waits)
        proceed = d.is_new or d.outcome in RETRYABLE
        if proceed and not d.is_new:
            await store.store_fact(d.id, fact, stream, keys, waits)
        return d.id, d.outcome, d.received_at, proceed
    row = await store.lock_delivery(delivery_id or 0)
    if row is None:
        raise errors.NotFound(f"no delivery {delivery_id}", code="DELIVERY_NOT_FOUND")
    proceed = not retry_only or row["outcome"] in RETRYABLE
    if proceed:
        await store.store_fact(int(row["id"]), fact, stream, keys, waits)
    return int(row["id"]), row["outcome"], row["received_at"], proceed


def _transient(exc: BaseException) -> bool:
    """The database, not the delivery, is the problem (gone, slow, a deadlock victim): the
    whole delivery is answered 503 and the provider's retry applies it."""
    from psycopg import errors as pg

    from shared.db import _is_connection_problem

    return _is_connection_problem(exc) or isinstance(exc, (pg.DeadlockDetected, pg.SerializationFailure,
                                                            pg.LockNotAvailable))


async def _attempt(
    services: Services, settings: WebhooksSettings, p: Parsed, incoming: Incoming | None,
    delivery_id: int | None, retry_only: bool, remote: Any, remote_error: str | None,
) -> Result:
    from functions.webhooks.apply import Applied, apply, prelocks

    folds = p.fact is not None and not p.invalid
    if folds and remote is not None:
        PROVIDERS[p.provider].with_truth(p.fact, remote)
    async with services.db.transaction(service=True) as conn:
        store = Store(conn)
        if folds:
            await store.lock(p.provider, [*p.locks(), *await prelocks(store, p)])
        did, previous, received_at, proceed = await _open(store, p, incoming, delivery_id, retry_only, folds)
        if not proceed:
            return Result(did, previous, duplicate=True)
        if remote_error and folds:  # the body now; reconciliation applies the provider's answer
            store.queue_verify(did, p.provider, remote_error)
        elif remote is not None and folds:
            store.verified(did)
        if p.invalid:
            applied = Applied("invalid", p.invalid)
        elif p.fact is None:
            applied = Applied("ignored", p.ignored)
        else:
            try:
                applied = await apply(store, p, did, settings)
            except Exception as exc:
                if _transient(exc):
                    raise
                raise _ApplyFailed() from exc  # rolls the transaction back: nothing half-applied
        outcome = applied.outcome
        if previous == "applied" and outcome == "stale":
            outcome = "applied"  # a replay of an applied event that newer ones have since overtaken
        try:
            tiers = await store.finish(did, outcome, user_id=applied.user_id, subscription_id=applied.subscription_id,
                                       error=applied.error, subject=p.subject, tiers=applied.tiers)
        except Exception as exc:
            if _transient(exc):
                raise
            raise _ApplyFailed() from exc
        await push_tiers(services, store, tiers)
    return Result(did, outcome, error=applied.error, tiers=tiers)


async def _record_failure(services: Services, p: Parsed, incoming: Incoming | None, delivery_id: int | None,
                          error: str) -> Result:
    """Store the delivery as `failed` (for a replay after the fix), in a transaction of its
    own; unless a concurrent copy has meanwhile applied it."""
    async with services.db.transaction(service=True) as conn:
        store = Store(conn)
        did, previous, _, proceed = await _open(store, p, incoming, delivery_id, retry_only=True)
        if not proceed:
            return Result(did, previous, duplicate=True)
        await store.finish(did, "failed", user_id=None, subscription_id=None, error=error, subject=p.subject)
    return Result(did, "failed", error=error)


def event_payload(user: str, **extra: Any) -> dict[str, Any]:
    """`subscription.changed` data: the orchestrator routes it to `user_id` and bumps the
    user's dashboard cache; the statement that recomputes the tier adds `tier` (now) and
    `previous_tier`."""
    return {"user_id": user, **extra}


async def push_tiers(services: Services, store: Store, tiers: dict[str, str]) -> None:
    """Write each tier to the rate limiter's key (the next request of that user is limited
    by it). Called inside the transaction, while the tier rows are locked. A Redis failure
    is queued for reconciliation in the same transaction, never a failed delivery."""
    for user, tier in tiers.items():
        try:
            await services.rate_limiter.set_tier(user, tier)
        except Exception as exc:  # Redis down, slow or not configured: the DB stays the truth
            metrics.incr("webhooks.tier_sync_deferred")
            json_log.log("warning", "tier not written to redis; queued", user=user, tier=tier, error=repr(exc))
            await store.queue_tier_sync(user, tier, repr(exc))
