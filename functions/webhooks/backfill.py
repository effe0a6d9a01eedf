"""Facts for the deliveries stored before the fold existed (0021), and one re-fold of their
streams: a step of every reconciliation run until it is done (0025 says how far it got).

A deployment that stored deliveries before 0021 has them without a `fact`, so the fold
cannot see them: a refund of such a charge would wait forever, and the first new event of
an older subscription would re-fold it from the new events alone. So, in two phases:

1. facts: the stored bodies, oldest first, `FACT_BATCH` x the run's limit per run, are
   parsed as a live delivery is, and each one's fact, stream, keys and waits recorded
   (nothing is applied; an event that folds into nothing, or that no longer parses, is only
   passed). Until this phase ends, a live delivery folds with the facts recorded so far.
2. folds: once every old delivery has its fact, each stream those deliveries belong to is
   re-folded once, through its newest delivery, exactly as `edgefn webhooks replay` would
   (refunds and TRANSFERs, which have no stream of their own, join theirs in that fold).

Each phase moves a cursor in the 0025 row, under that row's lock, so two runs at once never
take the same batch. Applying is idempotent, so a run that dies part way loses nothing: the
next one starts where the cursor says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.observability import json_log

if TYPE_CHECKING:
    from functions.webhooks.settings import WebhooksSettings
    from shared.services import Services

#: phase 1 only parses: this many times the run's limit per run
FACT_BATCH = 5


@dataclass
class Progress:
    facts: int = 0
    folds: int = 0
    done: bool = False


async def step(services: Services, settings: WebhooksSettings, *, limit: int = 200) -> tuple[Progress, int]:
    """One run's share of the backfill: (what it did, how many re-folds failed)."""
    progress = Progress()
    state = await services.db.fetch("select until_id, fact_cursor, done_at from public.webhook_backfill",
                                    service=True)
    if not state or state[0]["done_at"] is not None:
        progress.done = True
        return progress, 0
    if state[0]["fact_cursor"] < state[0]["until_id"]:
        progress.facts = await _facts(services, limit * FACT_BATCH)
        return progress, 0
    return await _folds(services, settings, limit, progress)


async def _facts(services: Services, limit: int) -> int:
    from functions.webhooks.logic import PROVIDERS
    from functions.webhooks.queries import Store

    recorded = 0
    async with services.db.transaction(service=True) as conn:
        store = Store(conn)
        cur = conn.cursor()
        await cur.execute("select until_id, fact_cursor from public.webhook_backfill for update skip locked")
        row = await cur.fetchone()
        if row is None:  # another run holds this batch
            return 0
        until_id, cursor = row
        await cur.execute(
            "select id, provider, body from public.webhook_deliveries "
            "where id > %s and id <= %s and fact is null order by id limit %s", (cursor, until_id, limit))
        rows = await cur.fetchall()
        for did, provider, body in rows:
            try:
                p = PROVIDERS[provider].parse(bytes(body))
            except Exception as exc:  # noqa: BLE001 - a body no longer readable stays as it is
                json_log.log("warning", "webhook backfill: body not parsed", delivery_id=did, error=repr(exc))
                continue
            if p.fact is None or p.invalid:
                continue
            await store.store_fact(did, p.fact, p.stream, p.keys, p.waits)
            recorded += 1
        cursor = rows[-1][0] if len(rows) == limit else until_id
        await cur.execute("update public.webhook_backfill set fact_cursor = %s, facts = facts + %s",
                          (cursor, recorded))
    json_log.log("info", "webhook backfill: facts recorded", recorded=recorded, up_to=cursor, until=until_id)
    return recorded


async def _folds(services: Services, settings: WebhooksSettings, limit: int, progress: Progress) -> tuple[Progress, int]:
    from functions.webhooks.reconcile import reprocess

    async with services.db.transaction(service=True) as conn:
        cur = conn.cursor()
        await cur.execute(
            "select until_id, fold_provider, fold_stream from public.webhook_backfill "
            "where done_at is null for update skip locked")
        row = await cur.fetchone()
        if row is None:
            return progress, 0
        until_id, after_provider, after_stream = row
        # each stream with a delivery from before the backfill, and its newest delivery
        await cur.execute(
            "select s.provider, s.stream, (select max(d.id) from public.webhook_deliveries d "
            "  where d.provider = s.provider and d.stream = s.stream) as newest "
            "from (select distinct provider, stream from public.webhook_deliveries "
            "      where id <= %s and stream is not null and (provider, stream) > (%s, %s)) s "
            "order by s.provider, s.stream limit %s", (until_id, after_provider, after_stream, limit))
        streams = await cur.fetchall()
        if streams:
            await cur.execute("update public.webhook_backfill set fold_provider = %s, fold_stream = %s, folds = folds + %s",
                              (streams[-1][0], streams[-1][1], len(streams)))
        if len(streams) < limit:
            await cur.execute("update public.webhook_backfill set done_at = now()")
            progress.done = True
    # the cursor moved first: a fold that fails here is logged, and that stream's next
    # event (or a replay) folds it again
    failed = 0
    for provider, _stream, newest in streams:
        bodies = await services.db.fetch("select id, provider, body from public.webhook_deliveries where id = %s",
                                         (newest,), service=True)
        try:
            await reprocess(services, settings, bodies[0], retry_only=False)
            progress.folds += 1
        except Exception as exc:  # noqa: BLE001 - one stream must not stop the others
            failed += 1
            json_log.log("error", "webhook backfill: fold failed", provider=provider, delivery_id=newest,
                         error=repr(exc))
    if progress.done:
        json_log.log("info", "webhook backfill: done")
    return progress, failed
