"""The drainer: outbox -> routing -> deliveries -> providers, safe with many at once.

1. Route: take due outbox events (`FOR UPDATE SKIP LOCKED`, so concurrent drainers take
   disjoint events) and, in the same transaction, write the inbox rows and one delivery
   row per (event, channel, target) (unique: a second routing of the same event adds
   nothing), and mark the events processed. An event that cannot be routed (unknown type,
   forged recipients) is marked processed with the reason.
2. Deliver, per channel: lease due rows (`SKIP LOCKED`, a lease that expires if the drainer
   dies), call the provider outside any transaction, then record the outcome and one
   attempt row per delivery in one statement. Failures retry with exponential backoff up to
   `max_attempts`, then the row is `dead` (the dead letters). A provider's 429 spends no
   attempt but one of `max_throttles`. An open circuit releases rows untouched (no attempt
   used), so an outage delays deliveries without losing any.

   - cache: bump the response-cache scope (one INCR each);
   - realtime: as many messages as the provider's pace allows (`pacing.py`, shared by every
     drainer through Redis, adapting to 429s), in batches sized to that pace; a batch
     Realtime refuses as invalid (422) is split until the bad message is alone (`isolate.py`);
   - push: due rows grouped per (user, device): urgent events one push each, normal ones
     coalesced into one push ("3 new likes"); the user's daily cap is taken atomically
     before sending; each platform paced like Realtime; a dead device token is deactivated.

The drain loop runs rounds until nothing is due or its budget is spent; when the next row
is due within a second (pacing, a short backoff) it waits for it. Each drain that did
something logs one line with its report, including the backlog age per channel (how long
the oldest undelivered, due delivery has waited).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from functions.realtime_orchestrator import queries as q
from functions.realtime_orchestrator.isolate import isolate
from functions.realtime_orchestrator.pacing import REALTIME_TICK, REALTIME_WINDOW, Grant, Pacer
from functions.realtime_orchestrator.providers import (
    ApnsSender, FcmSender, PushMessage, RealtimeBroadcast, Result, apns_from_settings, fail_fast_on_missing_sniffio,
    fcm_from_settings, message_id,
)
from functions.realtime_orchestrator.routing import (
    Lookups, OutboxEvent, Recipient, Rejected, Windows, local_day, lookup_keys, plan, resolve,
)
from functions.realtime_orchestrator.rules import RULES
from shared.db import records
from shared.observability import json_log
from shared.resilience import Backoff

if TYPE_CHECKING:
    from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
    from shared.resilience import OutboundHTTP
    from shared.services import Services


#: Realtime outcomes are recorded at least this often while a grant is being sent
RECORD_EVERY_SECONDS = 0.25


@dataclass
class DrainReport:
    rounds: int = 0
    routed: int = 0
    rejected: int = 0
    inbox: int = 0
    planned: int = 0
    sent: dict[str, int] = field(default_factory=lambda: {"realtime": 0, "push": 0, "cache": 0})
    retried: int = 0
    throttled: int = 0
    dead: int = 0
    dropped: int = 0
    suppressed: int = 0
    released: int = 0
    realtime_batches: int = 0
    push_requests: int = 0
    coalesced_pushes: int = 0
    devices_deactivated: int = 0
    #: 429s answered to requests (each throttles every delivery in it)
    throttled_requests: int = 0
    #: deliveries a provider refused alone as invalid (after splitting their batch)
    isolated: int = 0
    #: channel -> seconds the oldest undelivered, due delivery has waited (after the drain)
    backlog_age_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Done:
    """What becomes of one leased delivery."""

    id: int
    status: str
    available_at: datetime | None = None
    uncount: int = 0
    error: str | None = None
    sent_at: datetime | None = None
    outcome: str | None = None
    code: int | None = None
    ms: float | None = None
    #: taken from the user's daily push cap
    counted: bool = False
    #: 1 when a provider answered 429 (the throttle budget)
    throttled: int = 0


class Orchestrator:
    def __init__(
        self,
        services: Services,
        settings: RealtimeOrchestratorSettings,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        outbound: OutboundHTTP | None = None,
        owner: str | None = None,
        credential_clock: Callable[[], float] = time.time,
    ) -> None:
        self.services = services
        self.settings = settings
        self.clock = clock or services.clock
        self.sleep = sleep or asyncio.sleep
        #: provider credentials (OAuth assertions, APNs tokens) live in real time, whatever
        #: clock routing runs on (a test may move both)
        self.credential_clock = credential_clock
        self._outbound = outbound
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.windows = Windows(
            batch=timedelta(seconds=settings.batch_window_seconds),
            digest=timedelta(seconds=settings.digest_window_seconds),
            topic_prefix=settings.realtime_topic_prefix,
        )
        self._realtime: RealtimeBroadcast | None = None
        self._senders: dict[str, FcmSender | ApnsSender | None] | None = None
        self._pacers: dict[str, Pacer] = {}
        #: seconds until a paced provider may be called again (the loop waits for it)
        self._pace_wait: float | None = None
        self.retry_backoff = Backoff(settings.retry_base_seconds, settings.retry_max_seconds)
        self.throttle_backoff = Backoff(settings.throttle_base_seconds, settings.throttle_max_seconds)
        self._push_slots: asyncio.Semaphore | None = None
        #: the background drain after ingests (at most one per process) and whether an
        #: ingest stored something since it last looked
        self._background: asyncio.Task[None] | None = None
        self._more = False
        #: background drains run (tests and benchmarks read it)
        self.background_drains = 0
        fail_fast_on_missing_sniffio()

    # -- collaborators --------------------------------------------------------------------

    @property
    def outbound(self) -> OutboundHTTP:
        return self._outbound or self.services.outbound

    @property
    def realtime(self) -> RealtimeBroadcast:
        if self._realtime is None:
            s = self.settings
            self._realtime = RealtimeBroadcast(
                self.outbound, s.broadcast_url, s.require("supabase_service_role_key"), s.realtime_timeout_seconds
            )
        return self._realtime

    def sender(self, platform: str) -> FcmSender | ApnsSender | None:
        if self._senders is None:
            self._senders = {
                "fcm": fcm_from_settings(self.settings, self.outbound, self.credential_clock),
                "apns": apns_from_settings(self.settings, self.outbound, self.credential_clock, self.services.kv),
            }
        return self._senders.get(platform)

    def pacer(self, provider: str) -> Pacer:
        """The provider's shared pace: Realtime at the plan's messages per second, in batches;
        FCM and APNs at their configured ceilings, one message a request."""
        pacer = self._pacers.get(provider)
        if pacer is None:
            s = self.settings
            if provider == "realtime":
                pacer = Pacer(self.services.kv, provider, ceiling=s.realtime_messages_per_second,
                              max_batch=max(1, s.realtime_batch_size), batch_seconds=s.realtime_batch_seconds,
                              backoff=self.throttle_backoff, window=REALTIME_WINDOW, min_pause=REALTIME_TICK)
            else:
                ceiling = s.fcm_messages_per_second if provider == "fcm" else s.apns_messages_per_second
                pacer = Pacer(self.services.kv, provider, ceiling=ceiling, backoff=self.throttle_backoff)
            self._pacers[provider] = pacer
        return pacer

    def _paced(self, grant: Grant) -> None:
        if grant.wait > 0:
            self._pace_wait = grant.wait if self._pace_wait is None else min(self._pace_wait, grant.wait)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    # -- the loop ---------------------------------------------------------------------------

    async def drain(
        self, *, budget: float | None = None, wait: bool = True, max_rounds: int | None = None, limit: int | None = None,
    ) -> DrainReport:
        """Rounds of route + deliver until nothing is due or `budget` seconds are spent.
        `limit` caps each step's batch (a drain after ingest does a little, quickly)."""
        report = DrainReport()
        budget = self.settings.drain_budget_seconds if budget is None else budget
        started = time.monotonic()
        while True:
            report.rounds += 1
            self._pace_wait = None
            progress, due = await self.route(report, limit)
            # the channels side by side: a slow push provider does not hold Realtime back
            steps = [step(report, limit) for channel, step in (
                ("cache", self.deliver_cache), ("realtime", self.deliver_realtime), ("push", self.deliver_push),
            ) if channel in due]
            progress += sum(await asyncio.gather(*steps))
            left = budget - (time.monotonic() - started)
            if left <= 0 or (max_rounds is not None and report.rounds >= max_rounds):
                break
            if progress:
                continue
            if not wait:
                break
            due_in = await self.next_due_in()
            if due_in is not None and self._pace_wait is not None:
                due_in = max(due_in, self._pace_wait)  # due, but the provider's pace says wait
            if due_in is None or due_in > min(1.0, left):
                break
            await self.sleep(max(due_in, 0.01))
        await self._finish_report(report)
        return report

    async def _finish_report(self, report: DrainReport) -> None:
        """The backlog age per channel, and one log line when the drain did something."""
        rows = await self.services.db.fetch(q.BACKLOG_AGE, {"now": self.now()}, service=True)
        report.backlog_age_s = {r["channel"]: round(max(float(r["age"]), 0.0), 3) for r in rows}
        if report.routed or report.planned or any(report.sent.values()) or report.throttled or report.retried:
            json_log.log("info", "drain", **{k: v for k, v in report.to_dict().items() if v})

    def drain_soon(self) -> None:
        """Deliver what an ingest just stored, after its response, in this process. One
        background drain at a time: ingests that arrive while it runs only ask it for one
        more pass, so under load one drain batches what many ingests stored. What it does
        not finish (a budget spent, a provider down, the process stopping) stays in the
        outbox for the scheduled drain; leases and the delivery ledger keep it exactly once."""
        self._more = True
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(self._drain_in_background())

    async def _drain_in_background(self) -> None:
        budget = self.settings.ingest_drain_budget_seconds
        while self._more:
            self._more = False
            self.background_drains += 1
            try:
                await self.drain(budget=budget, wait=False)
            except Exception as exc:  # the outbox keeps the events; the scheduled drain retries
                json_log.log("warning", "background drain after ingest failed", error=repr(exc))
                return

    async def wait_background(self) -> None:
        """Wait for the background drain, if one is running (tests, shutdown)."""
        while self._background is not None and not self._background.done():
            await asyncio.shield(self._background)

    async def next_due_in(self) -> float | None:
        row = await self.services.db.fetchrow(q.NEXT_DUE, {"now": self.now()}, service=True)
        if row is None or row["next"] is None:
            return None
        return (row["next"] - self.now()).total_seconds()

    # -- 1. routing -------------------------------------------------------------------------

    async def route(self, report: DrainReport, limit: int | None = None) -> tuple[int, set[str]]:
        """Route due outbox events; returns how many, and the channels with deliveries due
        now (known before routing, plus what routing just made due), so a round claims
        only where there is something to claim."""
        from psycopg.rows import dict_row

        now = self.now()
        async with self.services.db.transaction(service=True) as conn:
            cur = conn.cursor(row_factory=dict_row)
            probe = conn.cursor(row_factory=dict_row)
            async with conn.pipeline():  # one round trip
                await cur.execute(q.CLAIM_OUTBOX, {"now": now, "limit": min(limit or 10**9, self.settings.outbox_batch_size)})
                await probe.execute(q.DUE_CHANNELS, {"now": now})
            rows = await cur.fetchall()
            flags = await probe.fetchone() or {}
            due = {channel for channel, yes in flags.items() if yes}
            if not rows:
                return 0, due
            events = [
                OutboxEvent(r["id"], r["event_id"], r["event_type"], r["payload"] if isinstance(r["payload"], dict) else {},
                            tuple(r["recipients"] or ()), r["actor_id"], r["created_at"])
                for r in rows
            ]
            lookups = await self._lookups(conn, events)
            users: set[str] = set()
            for ev in events:
                rule = RULES.get(ev.event_type)
                if rule is None:
                    continue
                try:
                    users.update(resolve(rule, ev, lookups))
                except Rejected:
                    pass
            recipients: dict[str, Recipient] = {}
            if users:
                await cur.execute(q.RECIPIENTS, {"ids": list(users), "now": now})
                for r in await cur.fetchall():
                    recipients[r["user_id"]] = Recipient(
                        r["user_id"], r["tier"], r["channels"] or {}, r["quiet_start"], r["quiet_end"], r["timezone"],
                        tuple((d[0], d[1]) for d in (r["devices"] or ())), r["open_batch"],
                    )
            p = plan(events, recipients, lookups, now, self.windows)
            created = {ev.event_id: ev.created_at for ev in events}
            ins, ds = p.inbox, p.deliveries
            async with conn.pipeline():  # the writes and the outbox update: one round trip
                if ins or ds:
                    await cur.execute(q.INSERT_ROUTED, {
                        "now": now,
                        "inbox": records([{"u": i.user_id, "ty": i.event_type, "pl": i.payload, "e": i.event_id} for i in ins]),
                        "deliveries": records([
                            {"e": d.event_id, "c": d.channel, "t": d.target, "u": d.user_id, "ty": d.event_type,
                             "pr": d.priority, "av": d.available_at, "pl": d.payload, "ec": created[d.event_id], "n": n}
                            for n, d in enumerate(ds)
                        ]),
                    })
                await cur.execute(q.MARK_ROUTED, (now, records([{"id": e.id, "err": p.rejected.get(e.id)} for e in events])))
        due |= {d.channel for d in p.deliveries if d.available_at <= now}
        report.routed += len(events) - len(p.rejected)
        report.rejected += len(p.rejected)
        report.inbox += len(p.inbox)
        report.planned += len(p.deliveries)
        for oid, why in p.rejected.items():
            json_log.log("warning", "event rejected", outbox_id=oid, reason=why)
        return len(events), due

    async def _lookups(self, conn: Any, events: Sequence[OutboxEvent]) -> Lookups:
        """What the resolvers check recipients against: every query in one round trip."""
        from psycopg.rows import dict_row

        keys = lookup_keys(events)
        lk = Lookups()
        wanted = [(sql, params, kind) for kind, sql, params in (
            ("match", q.MATCHES_BY_ID, (list(keys["match"]),)),
            ("pairs", q.MATCH_PAIRS, {"ids": list(keys["pair_users"])}),
            ("artist", q.FOLLOWERS, (list(keys["artist"]),)),
            ("media", q.MEDIA_OWNERS, (list(keys["media"]),)),
        ) if keys["pair_users" if kind == "pairs" else kind]]
        if not wanted:
            return lk
        cursors = []
        async with conn.pipeline():
            for sql, params, kind in wanted:
                c = conn.cursor(row_factory=dict_row)
                await c.execute(sql, params)
                cursors.append((kind, c))
        for kind, c in cursors:
            rows = await c.fetchall()
            if kind == "match":
                lk.matches = {r["id"]: (r["a"], r["b"]) for r in rows}
            elif kind == "pairs":
                lk.pairs = {(r["a"], r["b"]) for r in rows}
            elif kind == "artist":
                for r in rows:
                    lk.followers.setdefault(r["artist"], []).append(r["user_id"])
            else:
                lk.owners = {r["id"]: r["owner"] for r in rows}
        return lk

    # -- 2. deliveries: claim and finish -------------------------------------------------------

    async def claim(self, channel: str, sql: str = q.CLAIM, limit: int | None = None) -> list[dict[str, Any]]:
        now = self.now()
        return await self.services.db.fetch(sql, {
            "channel": channel, "now": now, "limit": min(limit or 10**9, self.settings.delivery_batch_size),
            "owner": self.owner, "lease_until": now + timedelta(seconds=self.settings.lease_seconds),
        }, service=True)

    async def finish(self, done: Sequence[Done], report: DrainReport, channel: str) -> int:
        if not done:
            return 0
        await self.services.db.fetch(q.FINISH, {
            "done": records([
                {"id": d.id, "status": d.status, "available_at": d.available_at, "uncount": d.uncount, "error": d.error,
                 "sent_at": d.sent_at, "outcome": d.outcome, "code": d.code, "ms": d.ms, "counted": d.counted,
                 "throttled": d.throttled}
                for d in done
            ]),
            "owner": self.owner, "now": self.now(),
        }, service=True)
        progress = 0
        for d in done:
            if d.status == "sent":
                report.sent[channel] += 1
            elif d.status == "dead":
                report.dead += 1
            elif d.status == "dropped":
                report.dropped += 1
            elif d.status == "suppressed":
                report.suppressed += 1
            elif d.outcome == "retry":
                report.retried += 1
            elif d.outcome == "throttled":
                report.throttled += 1
            else:
                report.released += 1
                continue
            progress += 1
        return progress

    def outcome(self, row: dict[str, Any], res: Result, wait: float | None = None) -> Done:
        """What `res` makes of a leased row. `wait`: the provider's pace after a provider-wide
        429 (every drainer waits the same); otherwise the row's own backoff."""
        now = self.now()
        o, kw = res.outcome, {"code": res.status_code, "ms": res.duration_ms}
        if o == "sent":
            return Done(row["id"], "sent", sent_at=now, outcome="sent", **kw)
        if o == "dropped":
            return Done(row["id"], "dropped", error=res.error, outcome="dropped", **kw)
        if o == "dead" or (o == "retry" and row["attempts"] >= self.settings.max_attempts):
            return Done(row["id"], "dead", error=res.error, outcome="dead", **kw)
        if o == "retry":
            after = self.retry_backoff.delay(row["attempts"], res.retry_after)
            return Done(row["id"], "pending", now + timedelta(seconds=after), error=res.error, outcome="retry", **kw)
        if o == "throttled":
            throttles = row["throttles"] + 1
            if throttles >= self.settings.max_throttles:
                return Done(row["id"], "dead", error=f"throttled {throttles} times; last: {res.error}", outcome="dead",
                            throttled=1, **kw)
            after = wait if wait is not None else self.throttle_backoff.delay(throttles, res.retry_after)
            return Done(row["id"], "pending", now + timedelta(seconds=after), uncount=1, error=res.error,
                        outcome="throttled", throttled=1, **kw)
        # released: not attempted (open circuit, pacing): no attempt used, nothing recorded
        return self.release(row, wait if wait is not None else res.retry_after or 1.0)

    def release(self, row: dict[str, Any], after: float) -> Done:
        return Done(row["id"], "pending", self.now() + timedelta(seconds=max(after, 0.05)), uncount=1)

    # -- cache ------------------------------------------------------------------------------------

    def lease_guard(self) -> Callable[[], bool]:
        """True while it is still safe to start a send for rows claimed now: a send must be
        recorded before the lease runs out, or another drainer could send the same again."""
        safe_until = time.monotonic() + self.settings.lease_seconds / 2
        return lambda: time.monotonic() < safe_until

    async def deliver_cache(self, report: DrainReport, limit: int | None = None) -> int:
        rows = await self.claim("cache", limit=limit)
        if not rows:
            return 0
        from shared.kv import KVUnavailable

        cache = self.services.response_cache
        try:
            # the same INCR `ResponseCache.bump` makes, every scope in one round trip
            replies = await self.services.kv.pipeline(
                [["INCR", cache.version_key(scope)] for scope in sorted({r["target"] for r in rows})]
            )
            failed = [r for r in replies if isinstance(r, Exception)]
            res = Result("retry", error=f"redis: {failed[0]}") if failed else Result("sent")
        except KVUnavailable as exc:
            res = Result("retry", error=f"redis: {exc.message}")
        done = [self.outcome(r, res) for r in rows]
        return await self.finish(done, report, "cache")

    # -- realtime ---------------------------------------------------------------------------------

    async def deliver_realtime(self, report: DrainReport, limit: int | None = None) -> int:
        """Claim only what the pace grants (nothing is claimed to be handed back), send it in
        batches of the pace's size, isolate what Realtime refuses, and record the outcomes
        every RECORD_EVERY_SECONDS (a drainer that dies resends, once its lease expires, at
        most what it sent since it last recorded)."""
        in_time = self.lease_guard()
        pacer = self.pacer("realtime")
        want = min(limit or 10**9, self.settings.delivery_batch_size)
        grant = await pacer.acquire(self.clock(), want)
        self._paced(grant)
        if not grant.granted:
            return 0
        rows = await self.claim("realtime", limit=grant.granted)
        progress = sent = released = 0
        stop: Result | None = None
        pending: list[Done] = []
        flushed = time.monotonic()
        for i in range(0, len(rows), grant.batch):
            chunk = rows[i : i + grant.batch]
            if stop is None and not in_time():
                stop = Result("released", error="lease running out", retry_after=0.05)
            if stop is not None:
                pending += [self.release(r, stop.retry_after or 1.0) for r in chunk]
                released += len(chunk)
                continue
            decided = await isolate(chunk, self._broadcaster(report))
            sent += sum(res.outcome == "sent" for _, res in decided)
            report.isolated += sum(res.outcome == "dead" and res.status_code in (413, 422) for _, res in decided)
            stop = next((res for _, res in decided if res.outcome in ("throttled", "retry", "released")), None)
            wait: float | None = None
            if stop is not None and stop.outcome == "throttled":
                report.throttled_requests += 1
                after = await pacer.acquire(self.clock(), 0, sent=sent, throttled=True, floor_wait=stop.retry_after)
                sent = 0
                self._paced(after)
                wait = after.wait
                stop = Result("released", error="throttled", retry_after=wait)
            elif stop is not None and stop.outcome == "retry":
                # unwell (5xx, a timeout): the rest waits, in order
                stop = Result("released", error=stop.error, retry_after=1.0)
            pending += [self.outcome(row, res, wait) for row, res in decided]
            if time.monotonic() - flushed >= RECORD_EVERY_SECONDS:
                progress += await self.finish(pending, report, "realtime")
                pending, flushed = [], time.monotonic()
        progress += await self.finish(pending, report, "realtime")
        unused = grant.granted - len(rows) + released
        if sent or unused:
            await pacer.acquire(self.clock(), 0, sent=sent, unused=unused, granted_at=grant.at)
        return progress

    def _broadcaster(self, report: DrainReport) -> Callable[[Sequence[dict[str, Any]]], Awaitable[Result]]:
        async def send(part: Sequence[dict[str, Any]]) -> Result:
            report.realtime_batches += 1
            return await self.realtime.send([
                {"topic": r["target"], "event": r["event_type"], "payload": r["payload"], "private": True} for r in part
            ])

        return send

    # -- push -----------------------------------------------------------------------------------------

    async def deliver_push(self, report: DrainReport, limit: int | None = None) -> int:
        in_time = self.lease_guard()
        rows = await self.claim("push", q.CLAIM_PUSH, limit)
        if not rows:
            return 0
        now = self.now()
        done: list[Done] = []
        live: list[dict[str, Any]] = []
        for r in rows:
            if not r["active"] or not r["token"]:
                done.append(Done(r["id"], "dropped", error="device token inactive or removed", outcome="dropped"))
            else:
                live.append(r)
        # one notification per user per (urgent event | coalesced batch); one push per device
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in live:
            coalesce = r["priority"] != "urgent" and self.settings.push_coalescing
            note = "batch" if coalesce else r["event_id"]
            groups[(r["user_id"], note, r["target"])].append(r)
        allowed, counted = await self._take_cap(groups, now)
        by_platform: dict[str, list[tuple[list[dict[str, Any]], PushMessage]]] = defaultdict(list)
        for key, members in groups.items():
            if (key[0], key[1]) not in allowed:
                done += [Done(r["id"], "suppressed", uncount=1, error="daily push cap reached") for r in members]
                continue
            by_platform[members[0]["platform"]].append((members, self._message(members)))

        if self._push_slots is None:
            self._push_slots = asyncio.Semaphore(max(1, self.settings.push_concurrency))
        slots = self._push_slots

        async def one(sender: FcmSender | ApnsSender, msg: PushMessage) -> Result:
            async with slots:  # shared by every drain in this process: bounded requests in flight
                if not in_time():
                    return Result("released", error="lease running out", retry_after=0.05)
                return await sender.send(msg)

        dead_devices: set[str] = set()
        for platform, sends in by_platform.items():
            sender = self.sender(platform)
            if sender is None:
                res = Result("retry", error=f"{platform} is not configured")
                done += [self.outcome(r, res) for members, _ in sends for r in members]
                continue
            pacer = self.pacer(platform)
            grant = await pacer.acquire(self.clock(), len(sends))
            self._paced(grant)
            sends.sort(key=lambda item: item[0][0]["id"])  # the oldest first
            go, later = sends[: grant.granted], sends[grant.granted :]
            done += [self.release(r, grant.wait) for members, _ in later for r in members]
            results = await self._send_in_order(sender, [msg for _, msg in go], one)
            provider_429 = [res for res in results if res.outcome == "throttled" and res.scope == "provider"]
            wait: float | None = None
            if provider_429 or go:
                floor = max((res.retry_after or 0.0 for res in provider_429), default=None)
                after = await pacer.acquire(self.clock(), 0, sent=sum(res.outcome == "sent" for res in results),
                                            throttled=bool(provider_429), floor_wait=floor,
                                            unused=sum(res.outcome == "released" for res in results))
                if provider_429:
                    report.throttled_requests += len(provider_429)
                    wait = after.wait
                    self._paced(after)
            for (members, msg), res in zip(go, results):
                if res.outcome != "released":
                    report.push_requests += 1
                    if res.outcome == "sent" and msg.count > 1:
                        report.coalesced_pushes += 1
                if res.outcome == "dropped":
                    dead_devices.add(members[0]["target"])
                row_wait = wait if res.outcome == "throttled" and res.scope == "provider" else None
                done += [self.outcome(r, res, row_wait) for r in members]
        for d in done:
            d.counted = d.id in counted
        if dead_devices:
            await self.services.db.fetch(q.DEACTIVATE_DEVICES, (sorted(dead_devices),), service=True)
            report.devices_deactivated += len(dead_devices)
        return await self.finish(done, report, "push")

    @staticmethod
    async def _send_in_order(
        sender: FcmSender | ApnsSender, messages: list[PushMessage],
        one: Callable[[FcmSender | ApnsSender, PushMessage], Awaitable[Result]],
    ) -> list[Result]:
        """Devices in parallel, each device's notifications one after the other, oldest first:
        a newer notification of a kind must arrive after the one it replaces. A device whose
        push must be retried keeps its later ones for then (in order), untried."""
        results: list[Result | None] = [None] * len(messages)
        chains: dict[str, list[int]] = defaultdict(list)
        for i, m in enumerate(messages):
            chains[m.token].append(i)

        async def chain(indexes: list[int]) -> None:
            stop: Result | None = None
            for i in indexes:
                if stop is not None:
                    results[i] = Result("released", error="an earlier push to this device waits",
                                        retry_after=stop.retry_after or 1.0)
                    continue
                res = results[i] = await one(sender, messages[i])
                if res.outcome in ("retry", "throttled", "released"):
                    stop = res

        await asyncio.gather(*(chain(ix) for ix in chains.values()))
        return [r for r in results if r is not None]

    def _message(self, members: list[dict[str, Any]]) -> PushMessage:
        members = sorted(members, key=lambda r: r["id"])
        first = members[0]["payload"]
        types = {r["event_type"] for r in members}
        kinds = {r["payload"].get("collapse") or r["event_type"] for r in members}
        ids = tuple(dict.fromkeys(r["event_id"] for r in members))
        n = len(ids)
        if n == 1:
            title, body = first.get("title") or "", first.get("body") or ""
        else:
            summary = first.get("summary") if len(types) == 1 else "{n} new notifications"
            title = (summary or "{n} new notifications").replace("{n}", str(n))
            body = members[-1]["payload"].get("body") or ""
        return PushMessage(
            token=members[0]["token"], title=title, body=body,
            event_type=members[0]["event_type"] if len(types) == 1 else "batch",
            event_ids=ids, count=n, urgent=members[0]["priority"] == "urgent",
            message_id=message_id([r["id"] for r in members]),
            collapse_key=kinds.pop() if len(kinds) == 1 else "updates",
        )

    async def _take_cap(
        self, groups: dict[tuple[str, str, str], list[dict[str, Any]]], now: datetime
    ) -> tuple[set[tuple[str, str]], set[int]]:
        """The (user, notification) pairs allowed to go out: already counted ones (a retry),
        plus as many new ones as the user's daily cap still allows (taken atomically, one
        round trip), and the ids of the rows newly counted."""
        allowed: set[tuple[str, str]] = set()
        counted: set[int] = set()
        wanted: dict[str, list[tuple[str, str]]] = defaultdict(list)
        rows_of: dict[tuple[str, str], list[int]] = defaultdict(list)
        meta: dict[str, tuple[Any, int]] = {}
        for (user, note, _device), members in sorted(groups.items(), key=lambda kv: min(r["id"] for r in kv[1])):
            key = (user, note)
            rows_of[key] += [r["id"] for r in members]
            if key in allowed or key in wanted[user]:
                continue
            if any(r["counted"] for r in members):
                allowed.add(key)
                continue
            wanted[user].append(key)
            r0 = members[0]
            cap = r0["cap"] if r0["cap"] is not None else self.settings.push_daily_cap
            meta[user] = (local_day(Recipient(user, timezone=r0["timezone"]), now), int(cap))
        wanted = {u: keys for u, keys in wanted.items() if keys}
        if not wanted:
            return allowed, counted
        users = sorted(wanted)
        rows = await self.services.db.fetch(q.RESERVE_PUSHES, (
            users, [meta[u][0] for u in users], [len(wanted[u]) for u in users], [meta[u][1] for u in users],
        ), service=True)
        granted = {r["user_id"]: int(r["granted"]) for r in rows}
        for u in users:
            for key in wanted[u][: granted.get(u, 0)]:
                allowed.add(key)
                counted.update(rows_of[key])
        return allowed, counted
