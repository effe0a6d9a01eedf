"""The drainer: outbox -> routing -> deliveries -> providers, safe with many at once.

1. Route: take due outbox events (`FOR UPDATE SKIP LOCKED`, so concurrent drainers take
   disjoint events) and, in the same transaction, write the inbox rows and one delivery
   row per (event, channel, target) (unique: a second routing of the same event adds
   nothing), and mark the events processed. An event that cannot be routed (unknown type,
   forged recipients) is marked processed with the reason.
2. Deliver, per channel: lease due rows (`SKIP LOCKED`, a lease that expires if the drainer
   dies), call the provider outside any transaction, then record the outcome and one
   attempt row per delivery in one statement. Failures retry with exponential backoff up to
   `max_attempts`, then the row is `dead` (the dead letters). An open circuit releases rows
   untouched (no attempt used), so an outage delays deliveries without losing any.

   - cache: bump the response-cache scope (one INCR each);
   - realtime: broadcasts in batches of `realtime_batch_size`, paced to the plan's messages
     per second by a limiter shared through Redis by every drainer; a 429 backs off;
   - push: due rows grouped per (user, device): urgent events one push each, normal ones
     coalesced into one push ("3 new likes"); the user's daily cap is taken atomically
     before sending; a dead device token is deactivated.

The drain loop runs rounds until nothing is due or its budget is spent; when the next row
is due within a second (pacing, a short backoff) it waits for it.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from functions.realtime_orchestrator import queries as q
from functions.realtime_orchestrator.providers import (
    ApnsSender, FcmSender, PushMessage, RealtimeBroadcast, Result, apns_from_settings, fail_fast_on_missing_sniffio,
    fcm_from_settings, message_id,
)
from functions.realtime_orchestrator.routing import (
    Lookups, OutboxEvent, Recipient, Rejected, Windows, local_day, lookup_keys, plan, resolve,
)
from functions.realtime_orchestrator.rules import RULES
from shared.observability import json_log

if TYPE_CHECKING:
    from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
    from shared.resilience import OutboundHTTP
    from shared.services import Services


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
    ) -> None:
        self.services = services
        self.settings = settings
        self.clock = clock or services.clock
        self.sleep = sleep or asyncio.sleep
        self._outbound = outbound
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.windows = Windows(
            batch=timedelta(seconds=settings.batch_window_seconds),
            digest=timedelta(seconds=settings.digest_window_seconds),
            topic_prefix=settings.realtime_topic_prefix,
        )
        self._realtime: RealtimeBroadcast | None = None
        self._senders: dict[str, FcmSender | ApnsSender | None] | None = None
        self._throttle_streak = 0
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
            # provider credentials (OAuth assertions, APNs tokens) live in real time, whatever
            # clock routing runs on
            self._senders = {
                "fcm": fcm_from_settings(self.settings, self.outbound, time.time),
                "apns": apns_from_settings(self.settings, self.outbound, time.time),
            }
        return self._senders.get(platform)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def backoff(self, attempts: int) -> float:
        s = self.settings
        delay = min(s.retry_max_seconds, s.retry_base_seconds * (2 ** max(attempts - 1, 0)))
        return delay * random.uniform(0.8, 1.2)

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
            progress, due = await self.route(report, limit)
            if "cache" in due:
                progress += await self.deliver_cache(report, limit)
            if "realtime" in due:
                progress += await self.deliver_realtime(report, limit)
            if "push" in due:
                progress += await self.deliver_push(report, limit)
            left = budget - (time.monotonic() - started)
            if left <= 0 or (max_rounds is not None and report.rounds >= max_rounds):
                break
            if progress:
                continue
            if not wait:
                break
            due_in = await self.next_due_in()
            if due_in is None or due_in > min(1.0, left):
                break
            await self.sleep(max(due_in, 0.01))
        return report

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
        from psycopg.types.json import Jsonb

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
                        "i_user": [i.user_id for i in ins], "i_type": [i.event_type for i in ins],
                        "i_payload": [Jsonb(i.payload) for i in ins], "i_event": [i.event_id for i in ins],
                        "d_event": [d.event_id for d in ds], "d_channel": [d.channel for d in ds],
                        "d_target": [d.target for d in ds], "d_user": [d.user_id for d in ds],
                        "d_type": [d.event_type for d in ds], "d_priority": [d.priority for d in ds],
                        "d_at": [d.available_at for d in ds], "d_payload": [Jsonb(d.payload) for d in ds],
                        "d_created": [created[d.event_id] for d in ds],
                    })
                await cur.execute(q.MARK_ROUTED, (now, [e.id for e in events], [p.rejected.get(e.id) for e in events]))
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
            "ids": [d.id for d in done], "status": [d.status for d in done],
            "available_at": [d.available_at for d in done], "uncount": [d.uncount for d in done],
            "error": [d.error for d in done], "sent_at": [d.sent_at for d in done],
            "outcome": [d.outcome for d in done], "code": [d.code for d in done], "ms": [d.ms for d in done],
            "counted": [d.counted for d in done],
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

    def outcome(self, row: dict[str, Any], res: Result) -> Done:
        now = self.now()
        o = res.outcome
        if o == "sent":
            return Done(row["id"], "sent", sent_at=now, outcome="sent", code=res.status_code, ms=res.duration_ms)
        if o == "dropped":
            return Done(row["id"], "dropped", error=res.error, outcome="dropped", code=res.status_code, ms=res.duration_ms)
        if o == "dead" or (o == "retry" and row["attempts"] >= self.settings.max_attempts):
            return Done(row["id"], "dead", error=res.error, outcome="dead", code=res.status_code, ms=res.duration_ms)
        if o == "retry":
            at = now + timedelta(seconds=self.backoff(row["attempts"]))
            return Done(row["id"], "pending", at, error=res.error, outcome="retry", code=res.status_code, ms=res.duration_ms)
        if o == "throttled":
            wait = res.retry_after if res.retry_after is not None else self.backoff(self._throttle_streak)
            return Done(row["id"], "pending", now + timedelta(seconds=wait), uncount=1, error=res.error,
                        outcome="throttled", code=res.status_code, ms=res.duration_ms)
        # released: not attempted (open circuit, pacing): no attempt used, nothing recorded
        return self.release(row, res.retry_after or 1.0)

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

    async def pace(self, n: int) -> tuple[int, float]:
        """How many broadcast messages may go now under the plan's messages per second (shared
        by every drainer through Redis), and how long to wait for the rest."""
        from shared.kv import KVUnavailable
        from shared.ratelimit import TIERS, RateRule

        mps = self.settings.realtime_messages_per_second
        rule = RateRule(name="realtime-broadcast", limits={t: mps for t in TIERS}, window_seconds=1)
        try:
            d = await self.services.rate_limiter.check(rule, "project", tier_hint="free", cost=n, partial=True)
        except KVUnavailable:
            return n, 0.0  # pacing unavailable: Realtime's own 429 still holds us back
        return d.granted, (1.0 if d.retry_after < 0 else max(d.retry_after, 0.05))

    async def deliver_realtime(self, report: DrainReport, limit: int | None = None) -> int:
        in_time = self.lease_guard()
        rows = await self.claim("realtime", limit=limit)
        if not rows:
            return 0
        granted, wait = await self.pace(len(rows))
        done = [self.release(r, wait) for r in rows[granted:]]
        size = max(1, self.settings.realtime_batch_size)
        stop: Result | None = None
        for i in range(0, granted, size):
            chunk = rows[i : min(i + size, granted)]  # the rows past the grant are released above
            if stop is None and not in_time():
                stop = Result("released", error="lease running out", retry_after=0.05)
            if stop is not None:
                done += [self.release(r, stop.retry_after or 1.0) for r in chunk]
                continue
            messages = [{"topic": r["target"], "event": r["event_type"], "payload": r["payload"], "private": True}
                        for r in chunk]
            res = await self.realtime.send(messages)
            if res.outcome != "released":
                report.realtime_batches += 1
            if res.outcome == "throttled":
                self._throttle_streak += 1
            elif res.outcome == "sent":
                self._throttle_streak = 0
            done += [self.outcome(r, res) for r in chunk]
            if res.outcome != "sent":
                # the provider is unwell or asks us to slow down: the rest waits (in order)
                stop = res if res.outcome in ("throttled", "released") else Result("released", retry_after=1.0)
        return await self.finish(done, report, "realtime")

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
        sends: list[tuple[list[dict[str, Any]], PushMessage, FcmSender | ApnsSender | None]] = []
        for key, members in groups.items():
            if (key[0], key[1]) not in allowed:
                done += [Done(r["id"], "suppressed", uncount=1, error="daily push cap reached") for r in members]
                continue
            sends.append((members, self._message(members), self.sender(members[0]["platform"])))

        if self._push_slots is None:
            self._push_slots = asyncio.Semaphore(max(1, self.settings.push_concurrency))
        slots = self._push_slots

        async def one(members: list[dict[str, Any]], msg: PushMessage, sender: FcmSender | ApnsSender | None) -> Result:
            if sender is None:
                return Result("retry", error=f"{members[0]['platform']} is not configured")
            async with slots:  # shared by every drain in this process: bounded requests in flight
                if not in_time():
                    return Result("released", error="lease running out", retry_after=0.05)
                return await sender.send(msg)

        results = await asyncio.gather(*(one(m, msg, s) for m, msg, s in sends))
        dead_devices: set[str] = set()
        for (members, msg, _), res in zip(sends, results):
            if res.outcome not in ("released",):
                report.push_requests += 1
                if res.outcome == "sent" and msg.count > 1:
                    report.coalesced_pushes += 1
            if res.outcome == "dropped":
                dead_devices.add(members[0]["target"])
            done += [self.outcome(r, res) for r in members]
        for d in done:
            d.counted = d.id in counted
        if dead_devices:
            await self.services.db.fetch(q.DEACTIVATE_DEVICES, (sorted(dead_devices),), service=True)
            report.devices_deactivated += len(dead_devices)
        return await self.finish(done, report, "push")

    def _message(self, members: list[dict[str, Any]]) -> PushMessage:
        members = sorted(members, key=lambda r: r["id"])
        first = members[0]["payload"]
        types = {r["event_type"] for r in members}
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
