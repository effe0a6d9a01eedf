"""Finishing what a live delivery could not, and re-applying after a fix.

- `reconcile(services)`: the scheduled job (and `edgefn webhooks replay --pending`):
  1. deliveries still `pending` (unknown user, refund before its charge, failed re-read)
     or `failed`, the least tried first (newest first among them), each at most `webhook_max_attempts` times and for
     30 days: applied through the same path as a live delivery once their user exists;
  2. deliveries applied from their body because the provider could not be read back
     (`webhook_verify_pending`, PAYSTACK_VERIFY / REVENUECAT_VERIFY): the provider is read
     again and its answer applied, each at most `webhook_max_attempts` times and for 30
     days; while its breaker is open the reads fail at once and wait for the next run;
  3. tiers whose Redis write failed (`tier_sync_pending`): the user's current tier from
     `user_tiers` (the source of truth) is written again;
  4. paid tiers the webhooks granted whose subscriptions have all lapsed (no EXPIRATION
     arrived, or it is still being retried): recomputed, written, announced;
  and, first, until it is done, a share of the backfill of deliveries stored before 0021
  (functions/webhooks/backfill.py): their facts, then one re-fold of their streams.
- `replay(...)`: every stored delivery in a window, in event order, re-applied. Applying
  is idempotent (ordered by event time, periods recorded per charge), so a replay changes
  only what the fixed code now decides differently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from functions.webhooks import backfill
from functions.webhooks.logic import PROVIDERS, Result, event_payload, push_tiers, reread, run
from functions.webhooks.queries import Store, TierUpdate
from functions.webhooks.settings import WebhooksSettings
from shared.observability import json_log

if TYPE_CHECKING:
    from shared.services import Services

RETRY_WINDOW_DAYS = 30


@dataclass
class Report:
    processed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    tiers_pushed: int = 0
    tiers_still_pending: int = 0
    lapsed: int = 0
    verified: int = 0
    verify_failed: int = 0
    backfill_facts: int = 0
    backfill_folds: int = 0
    backfill_done: bool = True

    def count(self, result: Result) -> None:
        self.processed += 1
        self.outcomes[result.outcome] = self.outcomes.get(result.outcome, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"processed": self.processed, "outcomes": dict(sorted(self.outcomes.items())), "errors": self.errors,
                "tiers_pushed": self.tiers_pushed, "tiers_still_pending": self.tiers_still_pending,
                "lapsed": self.lapsed, "verified": self.verified, "verify_failed": self.verify_failed,
                "backfill": {"facts": self.backfill_facts, "folds": self.backfill_folds, "done": self.backfill_done}}


async def reprocess(services: Services, settings: WebhooksSettings, row: dict[str, Any], *, retry_only: bool) -> Result:
    """Apply one stored delivery again (its row: id, provider, body)."""
    parsed = PROVIDERS[row["provider"]].parse(bytes(row["body"]))
    remote, remote_error = await reread(services, settings, parsed)
    return await run(services, settings, parsed, delivery_id=int(row["id"]), retry_only=retry_only,
                     remote=remote, remote_error=remote_error, timeout=30.0)


async def reconcile(services: Services, settings: WebhooksSettings | None = None, *, limit: int = 200) -> dict[str, Any]:
    settings = settings or services.settings  # type: ignore[assignment]
    assert isinstance(settings, WebhooksSettings)
    report = Report()
    try:
        progress = await backfill.step(services, settings, limit=limit)
        report.backfill_facts, report.backfill_folds = progress.facts, progress.folds
        report.backfill_done = progress.done
        report.errors += progress.failed
    except Exception as exc:  # the backfill must not stop the run's other work
        report.errors += 1
        report.backfill_done = False
        json_log.log("error", "webhook backfill failed", error=repr(exc))
    rows = await services.db.fetch(
        "select id, provider, body from public.webhook_deliveries "
        "where outcome in ('received', 'pending', 'failed') and attempts < %s "
        f"and received_at > now() - interval '{RETRY_WINDOW_DAYS} days' "
        # the least tried first, the newest first among those: deliveries that wait for an
        # account that never comes keep being tried (up to the attempts limit) but never hold
        # back newer ones behind a full batch (state comes from the set of events, so the
        # order they are retried in changes nothing)
        "order by attempts, received_at desc, id limit %s",
        (settings.webhook_max_attempts, limit), service=True,
    )
    for row in rows:
        await _one(services, settings, row, report, retry_only=True)
    await verify_pending(services, settings, report, limit=limit)
    await push_pending_tiers(services, report, limit=limit)
    await expire_lapsed(services, report, limit=limit)
    out = report.as_dict()
    json_log.log("info", "webhooks reconciled", **out)
    return out


async def replay(
    services: Services, settings: WebhooksSettings, *, since: datetime, until: datetime | None = None,
    provider: str | None = None, outcomes: list[str] | None = None, limit: int = 10_000, dry_run: bool = False,
    on_result: Any = None,
) -> dict[str, Any]:
    """Re-apply every delivery whose event (or receipt) time is in [since, until), `limit`
    at most, read a page at a time (a window can hold thousands: one fetch of them all, with
    their bodies, would hold the event loop for tens of milliseconds)."""
    report = Report()
    async for row in _window(services, since, until, provider, outcomes, limit):
        if dry_run:
            report.processed += 1
            report.outcomes[row["outcome"]] = report.outcomes.get(row["outcome"], 0) + 1
            if on_result is not None:
                on_result(row, None)
            continue
        result = await _one(services, settings, row, report, retry_only=False)
        if on_result is not None:
            on_result(row, result)
    if not dry_run:
        await push_pending_tiers(services, report, limit=limit)
    return report.as_dict()


#: deliveries read per query by `replay`
REPLAY_PAGE = 200


async def _window(services: Services, since: datetime, until: datetime | None, provider: str | None,
                  outcomes: list[str] | None, limit: int) -> AsyncIterator[dict[str, Any]]:
    """The deliveries of a replay window in event order, a page at a time (keyset paging)."""
    after: tuple[Any, int] | None = None
    left = limit
    while left > 0:
        rows = await services.db.fetch(
            "select id, provider, body, outcome, event_type, dedupe_key, coalesce(event_at, received_at) as t "
            "from public.webhook_deliveries "
            "where coalesce(event_at, received_at) >= %s and (%s::timestamptz is null or coalesce(event_at, received_at) < %s) "
            "and (%s::text is null or provider = %s) and (%s::text[] is null or outcome = any(%s)) "
            "and (%s::timestamptz is null or (coalesce(event_at, received_at), id) > (%s, %s)) "
            "order by coalesce(event_at, received_at), id limit %s",
            (since, until, until, provider, provider, outcomes, outcomes,
             after and after[0], after and after[0], after and after[1], min(left, REPLAY_PAGE)), service=True,
        )
        for row in rows:
            yield row
        if len(rows) < min(left, REPLAY_PAGE):
            return
        left -= len(rows)
        after = (rows[-1]["t"], rows[-1]["id"])


async def _one(services: Services, settings: WebhooksSettings, row: dict[str, Any], report: Report, *,
               retry_only: bool) -> Result | None:
    try:
        result = await reprocess(services, settings, row, retry_only=retry_only)
    except Exception as exc:  # one bad delivery must not stop the others
        report.errors += 1
        json_log.log("error", "webhook reprocess failed", delivery_id=row["id"], error=repr(exc))
        return None
    if not result.duplicate:
        report.count(result)
    return result


async def verify_pending(services: Services, settings: WebhooksSettings, report: Report, *, limit: int = 200) -> None:
    """Read the provider again for each delivery applied from its body, and apply its answer."""
    rows = await services.db.fetch(
        "select v.delivery_id as id, d.provider, d.body from public.webhook_verify_pending v "
        "join public.webhook_deliveries d on d.id = v.delivery_id "
        f"where v.attempts < %s and v.queued_at > now() - interval '{RETRY_WINDOW_DAYS} days' "
        "order by v.attempts, v.queued_at desc limit %s",  # as above: nothing starves behind a full batch
        (settings.webhook_max_attempts, limit), service=True,
    )
    for row in rows:
        parsed = PROVIDERS[row["provider"]].parse(bytes(row["body"]))
        remote, remote_error = await reread(services, settings, parsed)
        if remote is None:  # still failing (or no longer configured): try again next run
            report.verify_failed += 1
            await services.db.fetch(
                "update public.webhook_verify_pending set attempts = attempts + 1, last_error = %s "
                "where delivery_id = %s",
                ((remote_error or "verification is not configured")[:500], row["id"]), service=True,
            )
            continue
        try:
            await run(services, settings, parsed, delivery_id=int(row["id"]), remote=remote, timeout=30.0)
        except Exception as exc:
            report.errors += 1
            json_log.log("error", "webhook verification failed", delivery_id=row["id"], error=repr(exc))
            continue
        report.verified += 1


async def push_pending_tiers(services: Services, report: Report, *, limit: int = 200) -> None:
    rows = await services.db.fetch(
        "select p.user_id::text as user_id, p.queued_at, coalesce(t.tier, 'free') as tier "
        "from public.tier_sync_pending p left join public.user_tiers t on t.user_id = p.user_id "
        "order by p.queued_at limit %s",
        (limit,), service=True,
    )
    for row in rows:
        try:
            await services.rate_limiter.set_tier(row["user_id"], row["tier"])
        except Exception as exc:
            report.tiers_still_pending += 1
            await services.db.fetch(
                "update public.tier_sync_pending set attempts = attempts + 1, last_error = %s where user_id = %s",
                (repr(exc)[:500], row["user_id"]), service=True,
            )
            continue
        report.tiers_pushed += 1
        # a newer failure queued meanwhile keeps its row
        await services.db.fetch(
            "delete from public.tier_sync_pending where user_id = %s and queued_at <= %s",
            (row["user_id"], row["queued_at"]), service=True,
        )


async def expire_lapsed(services: Services, report: Report, *, limit: int = 200) -> None:
    rows = await services.db.fetch(
        "select t.user_id::text as user_id from public.user_tiers t "
        "where t.source = 'webhooks' and t.tier = 'paid' and not exists ("
        "  select 1 from public.subscriptions s where s.user_id = t.user_id and s.tier in ('paid', 'admin') "
        "  and s.status in ('active', 'non_renewing', 'cancelled', 'past_due', 'paused') "
        "  and s.current_period_end > now()) "
        "limit %s",
        (limit,), service=True,
    )
    for row in rows:
        user = row["user_id"]
        async with services.db.transaction(service=True) as conn:
            store = Store(conn)
            previous, tier = await store.refresh_tier(TierUpdate(user, event_payload(user, reason="lapsed"), False))
            report.lapsed += previous != tier
            await push_tiers(services, store, {user: tier})
