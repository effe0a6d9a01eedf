"""Deliveries stored before the fold existed (0021) are backfilled by reconciliation (0025,
functions/webhooks/backfill.py): a subscription whose early events were stored without
facts, and whose later events arrive after the upgrade, ends exactly where the whole
lifecycle delivered today ends; the refund of an old charge stops waiting.

The "old" deliveries are made as an older deployment left them: delivered, then stripped of
what 0021 added (fact, stream, keys, waits), with the 0025 row as that migration writes it
on such a database. The rest of the run's database is not touched: the backfill starts
just before this test's first delivery.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import pytest

from functions.webhooks.samples import PaystackIds, RevenueCatIds, lifecycle, revenuecat_event
from tests.factories import create_user
from tests.functions.webhooks.conftest import NOW, Hooks
from tests.functions.webhooks.test_convergence import PAYSTACK_N, REVENUECAT_N, deliver, snapshot


async def legacy(hooks: Hooks, since_id: int) -> int:
    """Strip what 0021 added from every delivery after `since_id`, as stored before it, and
    set the 0025 row as that migration does on such a database; returns how many."""
    rows = await hooks.rows(
        "update public.webhook_deliveries set fact = null, stream = null, keys = null, waits = null "
        "where id > %s returning id", (since_id,))
    await hooks.rows(
        "update public.webhook_backfill set until_id = (select max(id) from public.webhook_deliveries "
        "where fact is null), fact_cursor = %s, fold_provider = '', fold_stream = '', done_at = null",
        (since_id,))
    return len(rows)


async def newest_id(hooks: Hooks) -> int:
    row = await hooks.row("select coalesce(max(id), 0) as id from public.webhook_deliveries")
    assert row is not None
    return int(row["id"])


async def reconcile_until_backfilled(hooks: Hooks, limit: int) -> list[dict[str, Any]]:
    from functions.webhooks.reconcile import reconcile

    reports = []
    for _ in range(50):
        report = await reconcile(hooks.services, limit=limit)
        reports.append(report)
        if report["backfill"]["done"]:
            return reports
    raise AssertionError(f"not done after 50 runs: {reports[-1]}")


async def paystack(hooks: Hooks, old: int, limit: int) -> tuple[str, str, dict[str, Any]]:
    """(state delivered in order today, state after the upgrade and backfill, the old
    deliveries' last reconciliation report) for the Paystack lifecycle whose first `old`
    events were stored before 0021."""
    plan = await hooks.plan()

    async def play(upgrade_after: int | None) -> tuple[str, list[str], list[dict[str, Any]]]:
        email = f"{uuid.uuid4().hex[:12]}@example.com"
        user = await create_user(hooks.dsn, email=email)
        ids = PaystackIds.fresh(user, email=email, plan_code=plan.plan_code, amount=plan.amount)
        events = lifecycle("paystack", ids, now=NOW, refund_of="renewal", refund_amount=None)
        labels = {v: f"<{k}>" for k, v in asdict(ids).items() if isinstance(v, str) and len(v) > 6}
        labels[plan.code] = "<plan>"
        before = await newest_id(hooks)
        outcomes, reports = [], []
        for i, body in enumerate(events):
            if i == upgrade_after:
                assert await legacy(hooks, before) == upgrade_after
            outcomes.append(await deliver(hooks, "paystack", body))
        if upgrade_after is not None:
            reports = await reconcile_until_backfilled(hooks, limit)
        return await snapshot(hooks, [user], labels), outcomes, reports

    reference, _, _ = await play(None)
    got, outcomes, reports = await play(old)
    return reference, got, {"outcomes": outcomes, "reports": reports}


@pytest.mark.parametrize("old", range(1, PAYSTACK_N))
async def test_paystack_history_from_before_the_fold_ends_as_if_delivered_today(hooks: Hooks, old: int) -> None:
    reference, got, seen = await paystack(hooks, old, limit=200)
    assert got == reference, seen
    assert sum(r["backfill"]["facts"] for r in seen["reports"]) >= 1


async def test_a_refund_of_a_charge_stored_before_the_fold_stops_waiting(hooks: Hooks) -> None:
    # charge.success, subscription.create, payment_failed, the paid renewal: old; then
    # not_renew, the refund of that renewal and disable arrive after the upgrade
    reference, got, seen = await paystack(hooks, 4, limit=200)
    refund = seen["outcomes"][5]
    assert refund == "pending", seen["outcomes"]  # its charge has no fact yet: it waits...
    assert got == reference, seen  # ...and the backfill applies it
    assert '"refunded"' in got or "refund" in got


async def test_small_batches_take_several_runs_and_end_the_same(hooks: Hooks) -> None:
    reference, got, seen = await paystack(hooks, 6, limit=1)
    assert got == reference, seen
    assert len(seen["reports"]) >= 3  # facts over several runs, then the folds
    assert seen["reports"][-1]["backfill"]["done"] is True


async def test_revenuecat_history_from_before_the_fold_ends_as_if_delivered_today(hooks: Hooks) -> None:
    async def play(upgrade_after: int | None) -> str:
        buyer, receiver, third = [await create_user(hooks.dsn) for _ in range(3)]
        ids = RevenueCatIds.fresh(buyer, receiver)
        # as the convergence test: the documented lifecycle, then a chain of TRANSFERs
        events = [*lifecycle("revenuecat", ids, now=NOW),
                  revenuecat_event("TRANSFER", app_user_id=None, at=NOW - timedelta(days=2),
                                   transferred_from=[receiver], transferred_to=[third])]
        assert len(events) == REVENUECAT_N
        before = await newest_id(hooks)
        for i, body in enumerate(events):
            if i == upgrade_after:
                assert await legacy(hooks, before) == upgrade_after
            await deliver(hooks, "revenuecat", body)
        if upgrade_after is not None:
            await reconcile_until_backfilled(hooks, 200)
        labels = {buyer: "<buyer>", receiver: "<receiver>", third: "<third>", ids.original_transaction_id: "<otx>",
                  ids.anonymous_id: "<anon>"}
        return await snapshot(hooks, [buyer, receiver, third], labels)

    reference = await play(None)
    for old in (2, 5, REVENUECAT_N - 1):  # the purchase; through the cancellation; all but the last TRANSFER
        assert await play(old) == reference, f"the first {old} events stored before 0021"


async def test_a_database_without_old_deliveries_starts_finished(hooks: Hooks) -> None:
    from functions.webhooks.reconcile import reconcile

    row = await hooks.row("select until_id, done_at from public.webhook_backfill")
    # the run's database was migrated empty (or a test above finished its backfill)
    assert row is not None and row["done_at"] is not None
    report = await reconcile(hooks.services)
    assert report["backfill"] == {"facts": 0, "folds": 0, "done": True}
