"""Every statement the webhooks run, on one connection inside one service-role transaction.

    async with services.db.transaction(service=True) as conn:
        store = Store(conn)
        delivery = await store.record(...)

psycopg is imported on first use only (the handler's import stays light).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from functions.webhooks.state import SubState

if TYPE_CHECKING:
    from psycopg import AsyncConnection

#: outcomes that a later attempt may still change (anything else is final: a duplicate)
RETRYABLE = frozenset({"received", "pending", "failed"})


def is_uuid(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _jsonb(value: Any) -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb(value, dumps=lambda v: json.dumps(v, default=str, separators=(",", ":")))


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    outcome: str
    is_new: bool
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Plan:
    code: str
    tier: str
    amount_minor: int
    currency: str
    interval: str


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    user_id: str
    provider_ref: str
    state: SubState


def _sub(row: dict[str, Any]) -> Subscription:
    return Subscription(
        id=str(row["id"]),
        user_id=str(row["user_id"]),
        provider_ref=row["provider_ref"],
        state=SubState(
            status=row["status"],
            tier=row["tier"],
            plan_code=row["plan_code"],
            current_period_end=row["current_period_end"],
            last_event_at=row["last_event_at"],
            metadata=row["metadata"] or {},
        ),
    )


_SUB_COLUMNS = "id, user_id, provider_ref, status, tier, plan_code, current_period_end, last_event_at, metadata"

# The user's best tier from every subscription that grants one now, written to the table
# the rate limiter falls back to (an admin row is never changed by a payment provider; the
# row lock orders concurrent tier changes of one user), and `subscription.changed` for the
# realtime orchestrator when the tier or a subscription changed, all in one statement.
# Run it only after `_lock_users` (a separate statement): the `for update` below orders the
# writes, but only a lock taken before the statement gives it a snapshot that includes the
# subscriptions of a concurrent delivery for the same user.
_REFRESH_TIER = """
with eff as (
    select coalesce(max(case s.tier when 'admin' then 3 when 'paid' then 2 else 1 end), 1) as rank
    from public.subscriptions s
    where s.user_id = %(user)s
      and s.status in ('active', 'non_renewing', 'cancelled', 'past_due', 'paused')
      and s.current_period_end > now()
), prev as (
    select tier from public.user_tiers where user_id = %(user)s for update
), up as (
    insert into public.user_tiers as t (user_id, tier, source)
    select %(user)s, (array['free', 'paid', 'admin'])[eff.rank], 'webhooks' from eff
    on conflict (user_id) do update set tier = excluded.tier, source = excluded.source
        where t.tier <> 'admin' and t.tier <> excluded.tier
    returning tier
), now_tier as (
    select (select tier from prev) as previous, coalesce((select tier from up), (select tier from prev)) as tier
), announced as (
    -- one waiting `subscription.changed` per user: a newer state replaces the waiting one,
    -- which keeps the tier from before the first change it announces
    insert into public.outbox as o (event_type, payload, recipients, collapse_key)
    select 'subscription.changed',
           %(payload)s::jsonb || jsonb_build_object('tier', n.tier, 'previous_tier', coalesce(n.previous, 'free')),
           array[%(user)s]::uuid[], 'subscription.changed:' || %(user)s
    from now_tier n
    where %(changed)s or coalesce(n.previous, 'free') is distinct from n.tier
    on conflict (collapse_key) where processed_at is null and collapse_key is not null
    do update set payload = excluded.payload || jsonb_build_object('previous_tier', o.payload -> 'previous_tier')
    returning 1
)
select previous, tier, (select count(*) from announced) as announced from now_tier
"""




def _lock_users(users: Sequence[str]) -> tuple[str, Any]:
    """Per-user transaction locks, in sorted order, taken in a statement of their own BEFORE
    the tier recomputes. A recompute reads the subscriptions in its statement's snapshot
    (READ COMMITTED): had it waited inside that statement (on the user_tiers row lock) for
    another delivery of the same user to commit, it would still not see that delivery's
    subscription rows and could write a stale tier over it. Waiting here instead, the
    recompute that follows starts after the other commits and sees everything it wrote."""
    return ("select pg_advisory_xact_lock(hashtextextended('user_tier:' || u, 0)) "
            "from (select unnest(%s::text[]) as u order by 1) s", (sorted(set(users)),))


@dataclass(frozen=True, slots=True)
class TierUpdate:
    user_id: str
    #: the `subscription.changed` data (tier and previous_tier are added by the statement)
    payload: dict[str, Any]
    #: a subscription of this user changed: announce even when the tier did not
    changed: bool


class Store:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn
        #: writes whose result nobody reads, sent with `finish` (one round trip for all)
        self.queued: list[tuple[str, Any]] = []
        #: subscription upserts whose ids the fold needs (`write_rows`)
        self.upserts: list[tuple[str, Any]] = []

    async def _rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        cur = self.conn.cursor(row_factory=dict_row)
        await cur.execute(sql, params)
        return await cur.fetchall() if cur.description else []

    async def _row(self, sql: str, params: Any = None) -> dict[str, Any] | None:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Any = None) -> None:
        await self.conn.execute(sql, params)

    async def _pipelined(self, *statements: tuple[str, Any]) -> list[list[dict[str, Any]]]:
        """Independent statements sent together: one network round trip for all of them."""
        from psycopg.rows import dict_row

        cursors = []
        async with self.conn.pipeline():
            for sql, params in statements:
                cur = self.conn.cursor(row_factory=dict_row)
                await cur.execute(sql, params)
                cursors.append(cur)
        return [await c.fetchall() if c.description else [] for c in cursors]

    # -- deliveries ---------------------------------------------------------------------

    async def record(
        self, provider: str, dedupe_key: str, event_type: str | None, event_at: datetime | None,
        received_at: datetime, headers: dict[str, str], body: bytes, subject: str | None,
        fact: dict[str, Any] | None = None, stream: str | None = None, keys: Sequence[str] | None = None,
        waits: str | None = None,
    ) -> Delivery:
        """Store the delivery once per (provider, dedupe_key). A concurrent duplicate waits
        on the unique index until the first commits, then finds its row. A duplicate of a
        finished delivery takes no lock (its transaction writes nothing: no WAL flush to wait
        for); one still pending or failed is locked, to be applied again."""
        row = await self._row(
            "insert into public.webhook_deliveries "
            "(provider, dedupe_key, event_type, event_at, received_at, headers, body, subject, outcome, "
            "fact, stream, keys, waits) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s, 'received', %s, %s, %s, %s) "
            "on conflict (provider, dedupe_key) do nothing returning id",
            (provider, dedupe_key, event_type, event_at, received_at, _jsonb(headers), body, subject,
             _jsonb(fact) if fact is not None else None, stream, list(keys) if keys else None, waits),
        )
        if row is not None:
            return Delivery(int(row["id"]), "received", True, received_at)
        sql = "select id, outcome, received_at from public.webhook_deliveries where provider = %s and dedupe_key = %s"
        row = await self._row(sql, (provider, dedupe_key))
        assert row is not None  # the conflicting row is committed: it cannot be gone
        if row["outcome"] in RETRYABLE:
            row = await self._row(sql + " for update", (provider, dedupe_key))
            assert row is not None
        return Delivery(int(row["id"]), row["outcome"], False, row["received_at"])

    async def lock_delivery(self, delivery_id: int) -> dict[str, Any] | None:
        return await self._row(
            "select id, provider, outcome, body, received_at, event_at from public.webhook_deliveries "
            "where id = %s for update",
            (delivery_id,),
        )

    @staticmethod
    def _finish_stmt(delivery_id: int, outcome: str, user_id: str | None, subscription_id: str | None,
                     error: str | None, subject: str | None) -> tuple[str, Any]:
        return (
            "update public.webhook_deliveries set outcome = %s, user_id = %s, subscription_id = %s, error = %s, "
            "subject = coalesce(%s, subject), processed_at = now(), attempts = attempts + 1 where id = %s",
            (outcome, user_id, subscription_id, error, subject, delivery_id),
        )

    async def finish(
        self, delivery_id: int, outcome: str, *, user_id: str | None, subscription_id: str | None,
        error: str | None, subject: str | None, tiers: Sequence[TierUpdate] = (),
    ) -> dict[str, str]:
        """Record the delivery's outcome and, in the same round trip, recompute each user's
        tier (announcing it when it or a subscription changed). Returns user -> tier now."""
        queued, self.queued = self.queued, []
        stmts = [*queued, self._finish_stmt(delivery_id, outcome, user_id, subscription_id, error, subject)]
        if tiers:
            stmts.append(_lock_users([t.user_id for t in tiers]))
        stmts += [(_REFRESH_TIER, {"user": t.user_id, "payload": _jsonb(t.payload), "changed": t.changed}) for t in tiers]
        # in order, in this transaction: each statement sees the writes before it
        results = await self._pipelined(*stmts) if len(stmts) > 1 else [await self._rows(*stmts[0])]
        refreshed = results[len(results) - len(tiers):]
        return {t.user_id: (rows[0]["tier"] or "free") for t, rows in zip(tiers, refreshed, strict=True)}

    def queue_verify(self, delivery_id: int, provider: str, error: str) -> None:
        """The provider could not be read for this delivery: reconciliation reads it again."""
        self.queued.append((
            "insert into public.webhook_verify_pending (delivery_id, provider, last_error) values (%s, %s, %s) "
            "on conflict (delivery_id) do update set attempts = webhook_verify_pending.attempts + 1, "
            "last_error = excluded.last_error",
            (delivery_id, provider, error[:500]),
        ))

    def verified(self, delivery_id: int) -> None:
        """The provider's answer was applied to this delivery: nothing left to verify."""
        self.queued.append(("delete from public.webhook_verify_pending where delivery_id = %s", (delivery_id,)))

    # -- streams and folds -----------------------------------------------------------------

    async def lock(self, provider: str, names: Sequence[str]) -> None:
        """Transaction-scoped advisory locks, in sorted order: every delivery that could fold
        with another takes a lock they share (the stream, a charge reference, a user id)."""
        if names:
            await self.execute(
                "select pg_advisory_xact_lock(hashtextextended(%s || ':' || n, 0)) "
                "from (select unnest(%s::text[]) as n order by 1) s",
                (provider, sorted(set(names))),
            )

    async def stream_for(self, provider: str, key: str) -> str | None:
        """The stream of the delivery that provides `key` (a refund's charge)."""
        row = await self._row(
            "select stream from public.webhook_deliveries where keys @> array[%s]::text[] and provider = %s "
            "and stream is not null limit 1",
            (key, provider),
        )
        return row["stream"] if row else None

    async def streams_with(self, provider: str, keys: Sequence[str]) -> list[str]:
        """Streams whose deliveries name one of `keys` (a TRANSFER's users)."""
        rows = await self._rows(
            "select distinct stream from public.webhook_deliveries where keys && %s::text[] and provider = %s "
            "and stream is not null order by 1",
            (list(keys), provider),
        )
        return [r["stream"] for r in rows]

    async def transfers_to(self, provider: str, users: Sequence[str]) -> list[str]:
        """The users stream-less TRANSFERs moved purchases from, to one of `users`."""
        if provider != "revenuecat" or not users:
            return []
        rows = await self._rows(
            "select distinct f.u from public.webhook_deliveries w, jsonb_array_elements_text(w.fact -> 'from') f(u) "
            "where w.provider = 'revenuecat' and w.stream is null and w.fact is not null "
            "and (w.fact -> 'to') ?| %s::text[] and w.fact ->> 'kind' = 'transfer' order by 1",
            (list(users),),
        )
        return [r["u"] for r in rows]

    async def load_stream(self, provider: str, stream: str) -> list[dict[str, Any]]:
        """Every folded delivery of the stream, plus the stream-less ones that join it now:
        refunds waiting for one of its charges (adopted: their stream is set), TRANSFERs
        naming one of its users."""
        return await self._rows(
            """
            with mine as (
                select id, dedupe_key, fact, outcome, error, keys, received_at from public.webhook_deliveries
                where provider = %(p)s and stream = %(s)s and fact is not null
            ), adopted as (
                update public.webhook_deliveries w set stream = %(s)s
                where w.provider = %(p)s and w.stream is null and w.fact is not null
                  and w.waits in (select unnest(m.keys) from mine m where m.keys is not null)
                returning id, dedupe_key, fact, outcome, error, keys, received_at
            ), moved as (
                select id, dedupe_key, fact, outcome, error, keys, received_at from public.webhook_deliveries w
                where %(p)s = 'revenuecat' and w.stream is null and w.keys is not null
                  and w.keys && (select coalesce(array_agg(distinct k), '{}') from mine m, unnest(m.keys) k)
                  and w.provider = %(p)s and w.fact is not null
            )
            select * from mine union all select * from adopted union all select * from moved
            """,
            {"p": provider, "s": stream},
        )

    async def more_transfers(self, keys: Sequence[str], known: Sequence[int]) -> list[dict[str, Any]]:
        return await self._rows(
            "select id, dedupe_key, fact, outcome, error, keys, received_at from public.webhook_deliveries "
            "where keys && %s::text[] and keys is not null and stream is null and provider = 'revenuecat' "
            "and fact is not null "
            "and not (id = any(%s::bigint[]))",
            (list(keys), list(known)),
        )

    async def context_rows(self, provider: str, uids: Sequence[str], ext: Sequence[str], emails: Sequence[str],
                           plans: Sequence[str], stream: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                       list[dict[str, Any]]]:
        """(user lookups, plans, the stream's subscription rows, locked), in one round trip."""
        pp = [p[3:] for p in plans if p.startswith("pp:")]
        codes = [p[5:] for p in plans if p.startswith("code:")]
        users, plan_rows, subs = await self._pipelined(
            ("select kind, value, user_id::text as user_id from public.webhook_resolve(%s::uuid[], %s::text[]) "
             "union all select 'ext', b.external_id, b.user_id::text from public.billing_customers b "
             "where b.provider = %s and b.external_id = any(%s::text[])",
             (list(uids), list(emails), provider, list(ext))),
            ("select code, tier, amount_minor, currency, interval, provider_plan_code from public.subscription_plans "
             "where provider = %s and (provider_plan_code = any(%s::text[]) or code = any(%s::text[]))",
             (provider, pp, codes)),
            (f"select {_SUB_COLUMNS} from public.subscriptions where provider = %s and stream = %s for update",
             (provider, stream)),
        )
        return users, plan_rows, subs

    async def legacy_rows(self, provider: str, refs: Sequence[str]) -> list[dict[str, Any]]:
        """Rows written before streams existed (stream null), by their provider ref."""
        return await self._rows(
            f"select {_SUB_COLUMNS} from public.subscriptions where provider = %s and provider_ref = any(%s::text[]) "
            "and stream is null for update",
            (provider, list(refs)),
        )

    def save_row(self, provider: str, stream: str, ref: str, owner: str, state: SubState) -> None:
        """Queued: upsert of a folded subscription row (sent with `write_rows`)."""
        self.upserts.append((
            "insert into public.subscriptions as s (user_id, provider, provider_ref, stream, status, tier, plan_code, "
            "current_period_end, last_event_at, metadata) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "on conflict (provider, provider_ref) do update set user_id = excluded.user_id, stream = excluded.stream, "
            "status = excluded.status, tier = excluded.tier, plan_code = excluded.plan_code, "
            "current_period_end = excluded.current_period_end, last_event_at = excluded.last_event_at, "
            "metadata = excluded.metadata returning id::text as id",
            (owner, provider, ref, stream, state.status, state.tier, state.plan_code, state.current_period_end,
             state.last_event_at, _jsonb(state.metadata)),
        ))

    async def write_rows(self) -> list[str]:
        """Send the queued row upserts; their ids, in order."""
        queued, self.upserts = self.upserts, []
        if not queued:
            return []
        results = await self._pipelined(*queued) if len(queued) > 1 else [await self._rows(*queued[0])]
        return [r[0]["id"] for r in results]

    def set_outcome(self, delivery_id: int, outcome: str, error: str | None, user_id: str | None,
                    subscription_id: str | None) -> None:
        """Queued: another delivery of the stream, decided anew by this fold."""
        self.queued.append((
            "update public.webhook_deliveries set outcome = %s, error = %s, user_id = %s, "
            "subscription_id = coalesce(%s, subscription_id), processed_at = now() where id = %s",
            (outcome, error, user_id, subscription_id, delivery_id),
        ))

    def learn(self, provider: str, mapping: dict[str, str]) -> None:
        """Queued: provider ids seen with a user (kept for the first user seen with them)."""
        if mapping:
            ids = sorted(mapping)
            self.queued.append((
                "insert into public.billing_customers (provider, external_id, user_id) "
                "select %s, x.e, x.u from unnest(%s::text[], %s::uuid[]) x(e, u) on conflict do nothing",
                (provider, ids, [mapping[i] for i in ids]),
            ))

    async def store_fact(self, delivery_id: int, fact: dict[str, Any] | None, stream: str | None,
                         keys: Sequence[str] | None, waits: str | None) -> None:
        await self.execute(
            "update public.webhook_deliveries set fact = %s, stream = %s, keys = %s, waits = %s where id = %s",
            (_jsonb(fact) if fact is not None else None, stream, list(keys) if keys else None, waits, delivery_id),
        )

    # -- tiers and events -----------------------------------------------------------------

    async def refresh_tier(self, update: TierUpdate) -> tuple[str | None, str]:
        """(tier before, tier now) of the user, after recomputing it from the subscriptions."""
        await self.execute(*_lock_users([update.user_id]))
        row = await self._row(_REFRESH_TIER, {"user": update.user_id, "payload": _jsonb(update.payload),
                                              "changed": update.changed})
        assert row is not None
        return row["previous"], row["tier"] or "free"

    async def queue_tier_sync(self, user_id: str, tier: str, error: str) -> None:
        await self.execute(
            "insert into public.tier_sync_pending (user_id, tier, last_error) values (%s, %s, %s) "
            "on conflict (user_id) do update set tier = excluded.tier, last_error = excluded.last_error, "
            "queued_at = now(), attempts = public.tier_sync_pending.attempts + 1",
            (user_id, tier, error[:500]),
        )
