"""Any delivery order, any duplicates, one end state (issue 16).

Each provider's whole documented lifecycle (functions/webhooks/samples.py builds it from the
providers' documented payload shapes), or any subset of it, is delivered in a random
permutation with random duplicates, and must end exactly where delivering the same events
in provider order ends: the same subscription rows (owner, status, tier, plan, period end,
charges and refunds), the same tier in Postgres and in Redis, and the same waiting
`subscription.changed` events. Real Postgres and Redis; deliveries go through the same
`logic.run` as the HTTP route (signature checks are the route tests' business), each with
fresh ids, so one database serves every example. The in-order reference of a subset is
computed once and reused (states are compared with the example's ids replaced by labels).

`-m slow_property` runs many more examples.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.webhooks.samples import PaystackIds, RevenueCatIds, lifecycle, revenuecat_event
from tests.factories import create_user
from tests.functions.webhooks.conftest import NOW, Hooks
from tests.functions.webhooks.conftest import TestPlan as Plan

PAYSTACK_N, REVENUECAT_N = 7, 10
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
SLOW = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


@st.composite
def schedules(draw: st.DrawFn, n: int) -> tuple[tuple[int, ...], list[int]]:
    """(the events chosen, in provider order; the order they are delivered in, duplicates
    included). Half the time the whole lifecycle."""
    if draw(st.booleans()):
        chosen = tuple(range(n))
    else:
        mask = draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
        chosen = tuple(i for i in range(n) if mask[i])
    copies = [i for i in chosen for _ in range(draw(st.integers(1, 2)))]
    return chosen, list(draw(st.permutations(copies)))


async def deliver(hooks: Hooks, provider: str, body: dict[str, Any]) -> str:
    from functions.webhooks.logic import PROVIDERS, Incoming, run

    raw = json.dumps(body).encode()
    result = await run(hooks.services, hooks.services.settings, PROVIDERS[provider].parse(raw),  # type: ignore[arg-type]
                       incoming=Incoming(raw, {}, datetime.now(UTC)), timeout=10)
    return result.outcome


async def deliver_until_taken(hooks: Hooks, provider: str, body: dict[str, Any]) -> str:
    """As a provider does: a 503 (here a deadlock victim: two deliveries of one chain of
    TRANSFERs can lock its users in opposite orders) is delivered again."""
    from shared.errors import ServiceUnavailable

    for _ in range(5):
        try:
            return await deliver(hooks, provider, body)
        except ServiceUnavailable as exc:
            assert exc.__cause__ is not None and type(exc.__cause__).__name__ == "DeadlockDetected", repr(exc)
    raise AssertionError("five 503s in a row")


async def deliver_all(hooks: Hooks, provider: str, bodies: list[dict[str, Any]], *, concurrent: bool) -> list[str]:
    if concurrent:
        return list(await asyncio.gather(*(deliver_until_taken(hooks, provider, b) for b in bodies)))
    return [await deliver(hooks, provider, b) for b in bodies]


async def snapshot(hooks: Hooks, users: list[str], labels: dict[str, str]) -> str:
    """Everything the issue calls the state, as text, with this example's ids as labels."""
    db = hooks.services.db
    subs = await db.fetch(
        "select id::text, user_id::text, provider_ref, status, tier, plan_code, current_period_end, metadata "
        "from public.subscriptions where user_id = any(%s::uuid[]) order by provider_ref, user_id", (users,),
        service=True)
    tiers = await db.fetch("select user_id::text, tier from public.user_tiers where user_id = any(%s::uuid[]) "
                           "order by 1", (users,), service=True)
    events = await db.fetch(
        "select recipients::text[] as r, payload from public.outbox where event_type = 'subscription.changed' "
        "and recipients && %s::uuid[] and processed_at is null order by payload::text", (users,), service=True)
    redis = {u: await hooks.redis_tier(u) for u in users}
    for i, s in enumerate(subs):
        labels.setdefault(s["id"], f"<sub{i}>")
        s["metadata"].pop("transaction_id", None)  # the samples make a new one per event
    state = {"subscriptions": [dict(s) for s in subs], "tiers": [dict(t) for t in tiers],
             "redis": redis, "events": sorted(json.dumps(dict(e), default=str, sort_keys=True) for e in events)}
    text = json.dumps(state, default=str, sort_keys=True)
    for real, label in sorted(labels.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(real, label)
    out = json.loads(text)  # ordered by label, not by the random ids
    out["subscriptions"].sort(key=lambda r: (r["provider_ref"], r["user_id"]))
    out["tiers"].sort(key=lambda r: r["user_id"])
    out["events"].sort()  # by label too: two users' events can read alike but for their ids
    return json.dumps(out, sort_keys=True)


# -- Paystack ---------------------------------------------------------------------------------


class PaystackRun:
    def __init__(self, hooks: Hooks, plan: Plan) -> None:
        self.hooks, self.plan = hooks, plan
        self.reference: dict[Any, str] = {}
        self.concurrent = False

    async def play(self, chosen: tuple[int, ...], order: list[int] | None, refund_of: str,
                   refund_amount: int | None) -> tuple[str, list[str]]:
        email = f"{uuid.uuid4().hex[:12]}@example.com"
        user = await create_user(self.hooks.dsn, email=email)
        ids = PaystackIds.fresh(user, email=email, plan_code=self.plan.plan_code, amount=self.plan.amount)
        events = lifecycle("paystack", ids, now=NOW, refund_of=refund_of, refund_amount=refund_amount)
        outcomes = await deliver_all(self.hooks, "paystack", [events[i] for i in (order or chosen)],
                                     concurrent=self.concurrent)
        labels = {v: f"<{k}>" for k, v in asdict(ids).items() if isinstance(v, str) and len(v) > 6}
        labels[self.plan.code] = "<plan>"
        return await snapshot(self.hooks, [user], labels), outcomes

    async def check(self, chosen: tuple[int, ...], order: list[int], refund_of: str, refund_amount: int | None) -> None:
        key = (chosen, refund_of, refund_amount)
        if key not in self.reference:
            self.reference[key] = (await self.play(chosen, None, refund_of, refund_amount))[0]
        got, outcomes = await self.play(chosen, order, refund_of, refund_amount)
        assert "failed" not in outcomes
        assert got == self.reference[key], f"delivered {order} of {chosen}"


@pytest.fixture
async def paystack_run(hooks: Hooks) -> PaystackRun:
    return PaystackRun(hooks, await hooks.plan())


refund_options = st.tuples(st.sampled_from(["renewal", "first"]), st.sampled_from([None, 50000, 199999]))


@FAST
@given(schedule=schedules(PAYSTACK_N), refund=refund_options)
async def test_paystack_any_order_any_duplicates_one_end_state(
    paystack_run: PaystackRun, schedule: tuple[tuple[int, ...], list[int]], refund: tuple[str, int | None],
) -> None:
    await paystack_run.check(*schedule, *refund)


@pytest.mark.slow_property
@SLOW
@given(schedule=schedules(PAYSTACK_N), refund=refund_options)
async def test_paystack_convergence_many_examples(
    paystack_run: PaystackRun, schedule: tuple[tuple[int, ...], list[int]], refund: tuple[str, int | None],
) -> None:
    await paystack_run.check(*schedule, *refund)


# -- RevenueCat -------------------------------------------------------------------------------


class RevenueCatRun:
    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        self.reference: dict[Any, str] = {}
        self.concurrent = False

    async def play(self, chosen: tuple[int, ...], order: list[int] | None) -> tuple[str, list[str]]:
        buyer, receiver, third = [await create_user(self.hooks.dsn) for _ in range(3)]
        ids = RevenueCatIds.fresh(buyer, receiver)
        # the documented lifecycle, then a chain: the receiver hands the purchase on
        events = [*lifecycle("revenuecat", ids, now=NOW),
                  revenuecat_event("TRANSFER", app_user_id=None, at=NOW - timedelta(days=2),
                                   transferred_from=[receiver], transferred_to=[third])]
        outcomes = await deliver_all(self.hooks, "revenuecat", [events[i] for i in (order or chosen)],
                                     concurrent=self.concurrent)
        labels = {buyer: "<buyer>", receiver: "<receiver>", third: "<third>", ids.original_transaction_id: "<otx>",
                  ids.anonymous_id: "<anon>"}
        return await snapshot(self.hooks, [buyer, receiver, third], labels), outcomes

    async def check(self, chosen: tuple[int, ...], order: list[int]) -> None:
        if chosen not in self.reference:
            self.reference[chosen] = (await self.play(chosen, None))[0]
        got, outcomes = await self.play(chosen, order)
        assert "failed" not in outcomes
        assert got == self.reference[chosen], f"delivered {order} of {chosen}"


@pytest.fixture
def revenuecat_run(hooks: Hooks) -> RevenueCatRun:
    return RevenueCatRun(hooks)


@FAST
@given(schedule=schedules(REVENUECAT_N))
async def test_revenuecat_any_order_any_duplicates_one_end_state(
    revenuecat_run: RevenueCatRun, schedule: tuple[tuple[int, ...], list[int]],
) -> None:
    await revenuecat_run.check(*schedule)


@pytest.mark.slow_property
@SLOW
@given(schedule=schedules(REVENUECAT_N))
async def test_revenuecat_convergence_many_examples(
    revenuecat_run: RevenueCatRun, schedule: tuple[tuple[int, ...], list[int]],
) -> None:
    await revenuecat_run.check(*schedule)


# -- what the whole lifecycles end in, and concurrent copies ----------------------------------


async def test_the_whole_paystack_lifecycle_ends_cancelled_with_the_partly_refunded_renewal(
    paystack_run: PaystackRun,
) -> None:
    state = json.loads((await paystack_run.play(tuple(range(PAYSTACK_N)), None, "renewal", 50000))[0])
    [sub] = state["subscriptions"]
    assert (sub["status"], sub["tier"], sub["plan_code"]) == ("cancelled", "paid", "<plan>")
    charges = sub["metadata"]["charges"]
    assert sorted(charges) == ["<first_reference>", "<renewal_reference>"]
    assert charges["<renewal_reference>"]["refunds"] == {"<refund_reference>": 50000}
    assert state["tiers"][0]["tier"] == "paid" and list(state["redis"].values()) == ["paid"]


async def test_a_full_refund_of_the_current_period_ends_access_where_that_period_began(
    paystack_run: PaystackRun,
) -> None:
    state = json.loads((await paystack_run.play(tuple(range(PAYSTACK_N)), None, "renewal", None))[0])
    [sub] = state["subscriptions"]
    renewal = sub["metadata"]["charges"]["<renewal_reference>"]
    assert renewal["refunded"] is True
    assert sub["current_period_end"].replace(" ", "T") == renewal["start"]  # NOW - 10 days: past
    assert state["tiers"][0]["tier"] == "free" and list(state["redis"].values()) == ["free"]


async def test_the_whole_revenuecat_lifecycle_ends_with_the_receiver(revenuecat_run: RevenueCatRun) -> None:
    state = json.loads((await revenuecat_run.play(tuple(range(9)), None))[0])
    [sub] = state["subscriptions"]
    assert (sub["user_id"], sub["status"]) == ("<receiver>", "expired")
    # the receiver's TRANSFER onwards, delivered last: the purchase is the third user's
    state = json.loads((await revenuecat_run.play(tuple(range(REVENUECAT_N)), None))[0])
    [sub] = state["subscriptions"]
    assert (sub["user_id"], sub["status"], sub["metadata"]["transferred_from"]) == ("<third>", "expired", "<receiver>")
    # without the BILLING_ISSUE and the EXPIRATION, the last word is the UNCANCELLATION
    state = json.loads((await revenuecat_run.play((1, 2, 3, 4, 5, 8), None))[0])
    [sub] = state["subscriptions"]
    assert (sub["user_id"], sub["status"], sub["tier"]) == ("<receiver>", "active", "paid")
    assert sub["metadata"]["transferred_from"] == "<buyer>"


@pytest.mark.parametrize("provider", ["paystack", "revenuecat"])
async def test_every_event_twice_all_at_once_ends_as_in_order(
    make_hooks: Any, provider: str, paystack_run: PaystackRun, revenuecat_run: RevenueCatRun,
) -> None:
    """Concurrent deliveries (every event twice, all in flight together) fold one after the
    other per stream: the same end state as in order."""
    run: Any = paystack_run if provider == "paystack" else revenuecat_run
    n = PAYSTACK_N if provider == "paystack" else REVENUECAT_N
    chosen = tuple(range(n))
    args: tuple[Any, ...] = ("renewal", 50000) if provider == "paystack" else ()
    reference = (await run.play(chosen, None, *args))[0]
    run.hooks = make_hooks(webhook_deadline_s=30)  # 20 transactions queue on one pool
    run.concurrent = True
    got = (await run.play(chosen, [i for i in chosen for _ in range(2)], *args))[0]
    assert got == reference
