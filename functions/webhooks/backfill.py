"""Facts for the deliveries stored before the fold existed (0021), and one re-fold of what
they touch: a step of every reconciliation run until it is done (0025 keeps the progress).

A deployment that stored deliveries before 0021 has them without a `fact`, so the fold
cannot see them: a refund of such a charge would wait forever, and the first new event of
an older subscription would re-fold it from the new events alone. So, in two phases:

1. facts: the stored bodies, oldest first, up to `FACT_BATCH` per run (`FACT_PAGE` per
   transaction, for at most `STEP_SECONDS`), are parsed as a live delivery is, and each
   one's fact, stream, keys and waits recorded (nothing is applied; an event that folds
   into nothing, or no longer parses, is passed over; a fact a retry recorded meanwhile is
   kept). Until this phase ends, a live delivery folds with the facts recorded so far.
2. folds: then every stream a delivery given its fact in phase 1 belongs to, or joins (a
   refund: its charge's stream; a TRANSFER: the purchases of the users it moves from), is
   listed once and re-folded through its newest delivery, exactly as `edgefn webhooks
   replay` would, for at most `STEP_SECONDS` per run. A stream is claimed before its fold
   and marked folded only when the fold succeeded; one whose fold fails is tried again next
   run, `MAX_TRIES` times.

Two runs at once never take the same batch (the progress row's lock, the streams' claims),
and a run that dies part way loses nothing: the next one goes on from what was recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.observability import json_log

if TYPE_CHECKING:
    from functions.webhooks.settings import WebhooksSettings
    from shared.services import Services

#: phase 1: bodies parsed per run (parsing only, one update statement): five per unit of the
#: run's limit, at most this many
FACT_BATCH = 500
#: phase 1: bodies read and parsed per transaction
FACT_PAGE = 50
#: time one run spends in either phase (the scheduled invocation has 10 s in all)
STEP_SECONDS = 3.0
#: phase 2: attempts per stream before it is left to its next event or a replay
MAX_TRIES = 5
#: phase 2: how long a claimed stream is another run's
CLAIM_SECONDS = 60


@dataclass
class Progress:
    facts: int = 0
    folds: int = 0
    failed: int = 0
    done: bool = False


async def step(services: Services, settings: WebhooksSettings, *, limit: int = 200) -> Progress:
    """One run's share of the backfill."""
    progress = Progress()
    state = await services.db.fetch(
        "select until_id, fact_cursor, streams_at, done_at from public.webhook_backfill", service=True)
    if not state or state[0]["done_at"] is not None:
        progress.done = True
        return progress
    if state[0]["fact_cursor"] < state[0]["until_id"]:
        # a page per transaction, so no callback of the event loop parses more than a page
        budget, deadline = min(FACT_BATCH, 5 * max(1, limit)), time.monotonic() + STEP_SECONDS
        while budget > 0 and time.monotonic() < deadline:
            page = min(FACT_PAGE, budget)
            recorded, read = await _facts(services, page)
            progress.facts += recorded
            budget -= page
            if read < page:  # the end, or another run holds the batch
                break
        return progress
    if state[0]["streams_at"] is None:
        await _list_streams(services)
    await _folds(services, settings, limit, progress)
    return progress


async def _facts(services: Services, limit: int) -> tuple[int, int]:
    """One page of phase 1: (facts recorded, deliveries read)."""
    from functions.webhooks.logic import PROVIDERS
    from shared.db import records

    async with services.db.transaction(service=True) as conn:
        cur = conn.cursor()
        await cur.execute("select until_id, fact_cursor, legacy_before from public.webhook_backfill "
                          "where done_at is null for update skip locked")
        row = await cur.fetchone()
        if row is None:  # another run holds this batch
            return 0, 0
        until_id, cursor, before = row
        await cur.execute(
            "select id, provider, body from public.webhook_deliveries "
            "where id > %s and id <= %s and fact is null and stream is null and received_at < %s "
            "order by id limit %s", (cursor, until_id, before, limit))
        rows = await cur.fetchall()
        facts = []
        for did, provider, body in rows:
            try:
                p = PROVIDERS[provider].parse(bytes(body))
            except Exception as exc:  # noqa: BLE001 - a body no longer readable stays as it is
                json_log.log("warning", "webhook backfill: body not parsed", delivery_id=did, error=repr(exc))
                continue
            if p.fact is not None and not p.invalid:
                facts.append({"id": did, "fact": p.fact, "stream": p.stream, "keys": p.keys, "waits": p.waits})
        recorded = 0
        if facts:
            # one statement; a fact a retry recorded meanwhile is kept
            await cur.execute(
                """
                with done as (
                    update public.webhook_deliveries d
                       set fact = x.fact, stream = x.stream, keys = x.keys, waits = x.waits
                      from jsonb_to_recordset(%s::jsonb) as x(id bigint, fact jsonb, stream text, keys text[], waits text)
                     where d.id = x.id and d.fact is null
                    returning d.id
                )
                insert into public.webhook_backfill_rows (delivery_id) select id from done on conflict do nothing
                """, (records(facts),))
            recorded = cur.rowcount
        cursor = rows[-1][0] if len(rows) == limit else until_id
        await cur.execute("update public.webhook_backfill set fact_cursor = %s, facts = facts + %s",
                          (cursor, recorded))
    json_log.log("info", "webhook backfill: facts recorded", recorded=recorded, up_to=cursor, until=until_id)
    return recorded, len(rows)


async def _list_streams(services: Services) -> None:
    """Phase 2's list: the streams of the deliveries phase 1 gave a fact, and the streams a
    stream-less one (a refund, a TRANSFER) joins by its keys."""
    async with services.db.transaction(service=True) as conn:
        cur = conn.cursor()
        await cur.execute("select 1 from public.webhook_backfill where streams_at is null for update skip locked")
        if await cur.fetchone() is None:
            return
        await cur.execute(
            """
            insert into public.webhook_backfill_streams (provider, stream)
            select d.provider, d.stream from public.webhook_backfill_rows r
              join public.webhook_deliveries d on d.id = r.delivery_id
             where d.stream is not null
            union
            select o.provider, o.stream from public.webhook_backfill_rows r
              join public.webhook_deliveries d on d.id = r.delivery_id
              join public.webhook_deliveries o
                on o.provider = d.provider and o.stream is not null and o.keys is not null
               and o.keys && (coalesce(d.keys, '{}'::text[])
                              || case when d.waits is null then '{}'::text[] else array[d.waits] end)
             where d.stream is null
            on conflict do nothing
            """)
        await cur.execute("update public.webhook_backfill set streams_at = now()")


async def _folds(services: Services, settings: WebhooksSettings, limit: int, progress: Progress) -> None:
    deadline = time.monotonic() + STEP_SECONDS
    todo = await services.db.fetch(
        "select provider, stream from public.webhook_backfill_streams "
        "where folded_at is null and tries < %s and (claimed_until is null or claimed_until < now()) "
        "order by tries, provider, stream limit %s", (MAX_TRIES, limit), service=True)
    for t in todo:
        if time.monotonic() > deadline:
            break
        claimed = await services.db.fetch(
            "update public.webhook_backfill_streams set tries = tries + 1, "
            f"claimed_until = now() + interval '{CLAIM_SECONDS} seconds' "
            "where provider = %s and stream = %s and folded_at is null "
            "and (claimed_until is null or claimed_until < now()) returning tries",
            (t["provider"], t["stream"]), service=True)
        if not claimed:  # another run's
            continue
        error = await _fold(services, settings, t["provider"], t["stream"])
        await services.db.fetch(
            "update public.webhook_backfill_streams set claimed_until = null, last_error = %s, "
            "folded_at = case when %s::text is null then now() end where provider = %s and stream = %s",
            (error, error, t["provider"], t["stream"]), service=True)
        if error is None:
            progress.folds += 1
        else:
            progress.failed += 1
            json_log.log("error", "webhook backfill: fold failed", provider=t["provider"], stream=t["stream"],
                         tries=claimed[0]["tries"], error=error)
    left = await services.db.fetch(
        "select count(*) as n from public.webhook_backfill_streams where folded_at is null and tries < %s",
        (MAX_TRIES,), service=True)
    if left[0]["n"] == 0:
        await services.db.fetch("update public.webhook_backfill set done_at = now() where done_at is null",
                                service=True)
        progress.done = True
        json_log.log("info", "webhook backfill: done")


async def _fold(services: Services, settings: WebhooksSettings, provider: str, stream: str) -> str | None:
    """Re-fold one stream through its newest delivery; None, or why it did not fold."""
    from functions.webhooks.reconcile import reprocess  # reconcile imports this module

    rows = await services.db.fetch(
        "select id, provider, body from public.webhook_deliveries where provider = %s and stream = %s "
        "order by id desc limit 1", (provider, stream), service=True)
    if not rows:
        return None  # nothing left to fold
    try:
        result = await reprocess(services, settings, rows[0], retry_only=False)
    except Exception as exc:  # noqa: BLE001 - one stream must not stop the others
        return f"{type(exc).__name__}: {exc}"[:500]
    if result.duplicate or result.outcome == "failed":  # the apply failed and was recorded as such
        return f"delivery {rows[0]['id']}: {result.outcome} {result.error or ''}".strip()[:500]
    return None
