"""Deliveries stored before the fold existed (0021) are backfilled by reconciliation (0025,
functions/webhooks/backfill.py): a subscription whose early events were stored without
facts, and whose later events arrive after the upgrade, ends exactly where the whole
lifecycle delivered today ends; the refund of an old charge stops waiting.

The "old" deliveries are made as an older deployment left them: delivered, then stripped of
what 0021 added (their fact, stream, keys and waits; the subscription rows' stream) and
dated before 0021 was applied; then 0025's own SQL is run again to find them, as it does on
such a database. 0025 on a database being upgraded is tested with `edgefn migrate` on
scratch databases.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from datetime import timedelta
from typing import Any

import pytest

from edgefn.migrate import MIGRATIONS_DIR
from functions.webhooks.samples import PaystackIds, RevenueCatIds, lifecycle, revenuecat_event
from tests.factories import create_user
from tests.functions.webhooks.conftest import NOW, Hooks
from tests.functions.webhooks.test_convergence import PAYSTACK_N, REVENUECAT_N, deliver, snapshot


MIGRATION = MIGRATIONS_DIR / "0025_webhook_backfill.sql"


async def legacy(hooks: Hooks, since_id: int) -> int:
    """Make every delivery after `since_id` one stored before 0021, and restart the backfill
    as 0025 finds them; returns how many."""
    rows = await hooks.rows(
        "update public.webhook_deliveries set fact = null, stream = null, keys = null, waits = null, "
        "received_at = (select applied_at from public.edgefn_migrations where version = '0021_webhook_fold') "
        "  - interval '1 hour' + (id - %s) * interval '1 millisecond' "
        "where id > %s returning id, user_id", (since_id, since_id))
    await hooks.rows("update public.subscriptions set stream = null where user_id = any(%s::uuid[])",
                     ([str(r["user_id"]) for r in rows if r["user_id"]],))
    await script(hooks.dsn, "delete from public.webhook_backfill; delete from public.webhook_backfill_streams; "
                            "delete from public.webhook_backfill_rows;\n" + MIGRATION.read_text())
    return len(rows)


async def script(dsn: str, sql: str) -> None:
    """Statements run as `edgefn migrate` runs a file: one string, no parameters."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.encode())  # type: ignore[call-overload]


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


async def test_a_run_that_fails_a_fold_tries_that_stream_again(hooks: Hooks, monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.webhooks import reconcile as rec

    real, calls = rec.reprocess, []

    async def failing_once(*args: Any, **kw: Any) -> Any:
        calls.append(args[2]["id"])
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        return await real(*args, **kw)

    monkeypatch.setattr(rec, "reprocess", failing_once)
    reference, got, seen = await paystack(hooks, 6, limit=200)
    assert got == reference, seen
    assert calls[0] == calls[1]  # the stream that failed was folded again, through the same delivery
    assert sum(r["backfill"]["folds"] for r in seen["reports"]) == 1 and sum(r["errors"] for r in seen["reports"]) >= 1
    [row] = await hooks.rows("select tries, folded_at, last_error from public.webhook_backfill_streams")
    assert row["tries"] == 2 and row["folded_at"] is not None and row["last_error"] is None


async def test_two_runs_at_once_end_the_same(hooks: Hooks) -> None:
    import asyncio

    from functions.webhooks.reconcile import reconcile

    plan = await hooks.plan()
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    user = await create_user(hooks.dsn, email=email)
    ids = PaystackIds.fresh(user, email=email, plan_code=plan.plan_code, amount=plan.amount)
    events = lifecycle("paystack", ids, now=NOW, refund_of="renewal", refund_amount=None)
    before = await newest_id(hooks)
    for body in events[:4]:
        await deliver(hooks, "paystack", body)
    await legacy(hooks, before)
    for body in events[4:]:
        await deliver(hooks, "paystack", body)
    for _ in range(10):
        reports = await asyncio.gather(*(reconcile(hooks.services, limit=1) for _ in range(3)))
        if all(r["backfill"]["done"] for r in reports):
            break
    [row] = await hooks.rows("select facts, done_at from public.webhook_backfill")
    assert row["facts"] == 4 and row["done_at"] is not None  # each old delivery's fact recorded once
    streams = await hooks.rows("select tries from public.webhook_backfill_streams")
    assert [s["tries"] for s in streams] == [1]  # the one stream folded once, by one of the runs
    [sub] = await hooks.subscriptions(user)
    assert sub["status"] == "cancelled" and sub["metadata"]["charges"][ids.renewal_reference].get("refunds")


async def test_old_events_that_fold_into_nothing_are_passed_over(hooks: Hooks) -> None:
    from functions.webhooks.reconcile import reconcile

    before = await newest_id(hooks)
    await deliver(hooks, "revenuecat", revenuecat_event("TEST", app_user_id=None, at=NOW))
    assert await legacy(hooks, before) == 1
    report = await reconcile(hooks.services)
    assert report["backfill"]["facts"] == 0 and report["errors"] == 0
    report = await reconcile(hooks.services)
    assert report["backfill"]["done"] is True
    [row] = await hooks.rows("select fact from public.webhook_deliveries where id > %s", (before,))
    assert row["fact"] is None


# -- 0025 itself, on databases being upgraded (edgefn migrate, scratch databases) ------------


@pytest.fixture
def upgrade(pg_admin_dsn: str, tmp_path: Path) -> Iterator[Callable[[bool], dict[str, Any]]]:
    """upgrade(with_old_deliveries) -> the 0025 row after migrating a new database to 0020,
    storing two deliveries as the code of that time did (or none), then migrating to the end."""
    import psycopg
    from psycopg.rows import dict_row

    from edgefn.migrate import apply_migrations
    from tests.factories import scratch_database

    before = tmp_path / "to_0020"
    before.mkdir()
    for f in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if f.stem < "0021":
            shutil.copy(f, before / f.name)

    def run(with_old: bool) -> dict[str, Any]:
        with scratch_database(pg_admin_dsn, "edgefn_bf") as dsn:
            apply_migrations(dsn, before)
            ids = []
            with psycopg.connect(dsn, autocommit=True) as conn:
                if with_old:
                    for kind in ("INITIAL_PURCHASE", "RENEWAL"):
                        body = json.dumps(revenuecat_event(kind, app_user_id=str(uuid.uuid4()), at=NOW)).encode()
                        ids += [r[0] for r in conn.execute(
                            "insert into public.webhook_deliveries (provider, dedupe_key, event_type, body, outcome) "
                            "values ('revenuecat', %s, %s, %s, 'applied') returning id",
                            (str(uuid.uuid4()), kind, body))]
            apply_migrations(dsn)
            with psycopg.connect(dsn, row_factory=dict_row) as conn:
                row = conn.execute("select * from public.webhook_backfill").fetchone()
                assert row is not None
                return {**row, "old_ids": ids}

    yield run


def test_0025_on_a_database_with_old_deliveries_starts_at_them(upgrade: Callable[[bool], dict[str, Any]]) -> None:
    row = upgrade(True)
    assert row["until_id"] == max(row["old_ids"]) and row["fact_cursor"] == 0 and row["done_at"] is None


def test_0025_on_a_database_without_old_deliveries_starts_finished(upgrade: Callable[[bool], dict[str, Any]]) -> None:
    row = upgrade(False)
    assert row["until_id"] == 0 and row["done_at"] is not None
