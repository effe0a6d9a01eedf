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
    select public.enqueue_event(
        'subscription.changed',
        %(payload)s::jsonb || jsonb_build_object('tier', n.tier, 'previous_tier', coalesce(n.previous, 'free')),
        array[%(user)s]::uuid[])
    from now_tier n
    where %(changed)s or coalesce(n.previous, 'free') is distinct from n.tier
)
select previous, tier, (select count(*) from announced) as announced from now_tier
"""


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
    ) -> Delivery:
        """Store the delivery once per (provider, dedupe_key). A concurrent duplicate waits
        on the unique index until the first commits, then finds its row. A duplicate of a
        finished delivery takes no lock (its transaction writes nothing: no WAL flush to wait
        for); one still pending or failed is locked, to be applied again."""
        row = await self._row(
            "insert into public.webhook_deliveries "
            "(provider, dedupe_key, event_type, event_at, received_at, headers, body, subject, outcome) "
            "values (%s, %s, %s, %s, %s, %s, %s, %s, 'received') "
            "on conflict (provider, dedupe_key) do nothing returning id",
            (provider, dedupe_key, event_type, event_at, received_at, _jsonb(headers), body, subject),
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
        stmts += [(_REFRESH_TIER, {"user": t.user_id, "payload": _jsonb(t.payload), "changed": t.changed}) for t in tiers]
        # in order, in this transaction: each statement sees the writes before it
        results = await self._pipelined(*stmts) if len(stmts) > 1 else [await self._rows(*stmts[0])]
        return {t.user_id: (rows[0]["tier"] or "free") for t, rows in zip(tiers, results[len(queued) + 1:], strict=True)}

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

    async def delivery_by_key(self, provider: str, dedupe_key: str) -> dict[str, Any] | None:
        return await self._row(
            "select id, outcome, subscription_id, user_id from public.webhook_deliveries "
            "where provider = %s and dedupe_key = %s",
            (provider, dedupe_key),
        )

    # -- plans and users ------------------------------------------------------------------

    @staticmethod
    def _plan_stmt(provider: str, code: str | None, provider_code: str | None) -> tuple[str, Any]:
        return (
            "select code, tier, amount_minor, currency, interval from public.subscription_plans "
            "where provider = %s and (code = %s or provider_plan_code = %s) "
            "order by (provider_plan_code = %s) desc nulls last limit 1",
            (provider, code, provider_code, provider_code),
        )

    @staticmethod
    def _plan(rows: list[dict[str, Any]]) -> Plan | None:
        if not rows:
            return None
        r = rows[0]
        return Plan(r["code"], r["tier"], int(r["amount_minor"]), r["currency"].strip(), r["interval"])

    async def plan(self, provider: str, *, code: str | None = None, provider_code: str | None = None) -> Plan | None:
        """A plan by our code or by the provider's plan / product id."""
        if code is None and provider_code is None:
            return None
        return self._plan(await self._rows(*self._plan_stmt(provider, code, provider_code)))

    @staticmethod
    def _user_stmt(
        provider: str, user_ids: Sequence[str], external_ids: Sequence[str], email: str | None,
        learn: Sequence[str], relearn: bool,
    ) -> tuple[str, Any]:
        conflict = (
            "on conflict (provider, external_id) do update set user_id = excluded.user_id"
            if relearn else "on conflict do nothing"
        )
        return (
            f"""
            with u as (
                select coalesce(
                    public.webhook_find_user(%(uids)s::uuid[], null),
                    (select b.user_id from unnest(%(ext)s::text[]) with ordinality x(ext, ord)
                       join public.billing_customers b on b.provider = %(provider)s and b.external_id = x.ext
                      order by x.ord limit 1),
                    public.webhook_find_user(array[]::uuid[], %(email)s::text)
                ) as user_id
            ), learned as (
                insert into public.billing_customers (provider, external_id, user_id)
                select %(provider)s, x, u.user_id from u, unnest(%(learn)s::text[]) x
                where u.user_id is not null
                {conflict}
            )
            select user_id::text as user_id from u
            """,
            {"uids": [i for i in user_ids if is_uuid(i)], "ext": list(external_ids), "provider": provider,
             "email": email, "learn": sorted(set(learn))},
        )

    async def find_user(
        self, provider: str, *, user_ids: Sequence[str] = (), external_ids: Sequence[str] = (),
        email: str | None = None, learn: Sequence[str] = (), relearn: bool = False,
    ) -> str | None:
        """The first of: a live auth user among `user_ids` (in order), a known mapping of one
        of `external_ids`, the (oldest) user with this `email`. On a hit, `learn` ids are
        mapped to the user (`relearn`: even when already mapped to someone else)."""
        rows = await self._rows(*self._user_stmt(provider, user_ids, external_ids, email, learn, relearn))
        return rows[0]["user_id"] if rows else None

    async def user_and_plan(
        self, provider: str, *, user_ids: Sequence[str] = (), external_ids: Sequence[str] = (),
        email: str | None = None, learn: Sequence[str] = (), plan_code: str | None = None,
        provider_plan_code: str | None = None,
    ) -> tuple[str | None, Plan | None]:
        """`find_user` and `plan` in one round trip (pipelined)."""
        if plan_code is None and provider_plan_code is None:
            return await self.find_user(provider, user_ids=user_ids, external_ids=external_ids, email=email,
                                        learn=learn), None
        users, plans = await self._pipelined(
            self._user_stmt(provider, user_ids, external_ids, email, learn, False),
            self._plan_stmt(provider, plan_code, provider_plan_code),
        )
        return (users[0]["user_id"] if users else None), self._plan(plans)

    async def users_for(self, provider: str, ids: list[str]) -> list[str]:
        """Every user one of these ids names (directly, or through a mapping)."""
        rows = await self._rows(
            "select u::text as user_id from public.webhook_existing_users(%s::uuid[]) u "
            "union select b.user_id::text from public.billing_customers b where b.provider = %s and b.external_id = any(%s)",
            ([i for i in ids if is_uuid(i)], provider, ids),
        )
        return [r["user_id"] for r in rows]

    # -- subscriptions -------------------------------------------------------------------

    async def lock_subscription(self, provider: str, provider_ref: str, user_id: str) -> Subscription:
        """The subscription row, created (pending, granting nothing) if new, locked either way."""
        row = await self._row(
            "insert into public.subscriptions (user_id, provider, provider_ref, status, tier) "
            "values (%s, %s, %s, 'pending', 'free') "
            "on conflict (provider, provider_ref) do update set provider = excluded.provider "
            f"returning {_SUB_COLUMNS}",
            (user_id, provider, provider_ref),
        )
        assert row is not None
        return _sub(row)

    async def subscription_by_id(self, sub_id: str) -> Subscription | None:
        row = await self._row(f"select {_SUB_COLUMNS} from public.subscriptions where id = %s for update", (sub_id,))
        return _sub(row) if row else None

    async def paystack_subscription(self, subscription_code: str | None) -> Subscription | None:
        if not subscription_code:
            return None
        row = await self._row(
            f"select {_SUB_COLUMNS} from public.subscriptions "
            "where provider = 'paystack' and metadata ->> 'subscription_code' = %s "
            "order by updated_at desc limit 1 for update",
            (subscription_code,),
        )
        return _sub(row) if row else None

    def save_subscription(self, sub: Subscription, state: SubState, user_id: str | None = None) -> None:
        """Queued: written by `finish`, before the tiers are recomputed from it."""
        self.queued.append((
            "update public.subscriptions set user_id = %s, status = %s, tier = %s, plan_code = %s, "
            "current_period_end = %s, last_event_at = %s, metadata = %s where id = %s",
            (user_id or sub.user_id, state.status, state.tier, state.plan_code, state.current_period_end,
             state.last_event_at, _jsonb(state.metadata), sub.id),
        ))

    async def move_subscriptions(self, provider: str, from_users: list[str], to_user: str, event_at: datetime) -> int:
        rows = await self._rows(
            "update public.subscriptions set user_id = %s, last_event_at = greatest(last_event_at, %s) "
            "where provider = %s and user_id = any(%s::uuid[]) and user_id <> %s returning id",
            (to_user, event_at, provider, from_users, to_user),
        )
        return len(rows)

    # -- tiers and events -----------------------------------------------------------------

    async def refresh_tier(self, update: TierUpdate) -> tuple[str | None, str]:
        """(tier before, tier now) of the user, after recomputing it from the subscriptions."""
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
