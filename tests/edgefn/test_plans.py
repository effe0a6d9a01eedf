"""`edgefn plans sync` (edgefn/plans.py): an app's plans from a file, as the operator runs it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from edgefn import plans
from edgefn.cli import main
from tests.factories import scratch_database

GOOD = """
[[plan]]
code = "gold_monthly"
provider = "paystack"
provider_plan_code = "PLN_gold_monthly_1"
amount = 500000
currency = "NGN"
interval = "monthly"
tier = "paid"

[[plan]]
code = "gold_ios"
provider = "revenuecat"
provider_plan_code = "com.example.gold"
amount = 999
currency = "USD"
interval = "annually"
tier = "paid"
"""


@pytest.fixture(scope="module")
def plans_db(pg_admin_dsn: str) -> Iterator[str]:
    """A database of its own: `--deactivate-missing` touches every plan of a provider."""
    from edgefn.migrate import apply_migrations

    with scratch_database(pg_admin_dsn, "edgefn_plans") as dsn:
        apply_migrations(dsn)
        yield dsn


def rows(dsn: str) -> dict[str, tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "select code, provider, tier, amount_minor, currency, interval, provider_plan_code, active "
            "from public.subscription_plans").fetchall()}


def sync(tmp_path: Path, dsn: str, text: str, *extra: str) -> int:
    f = tmp_path / "plans.toml"
    f.write_text(text)
    return main(["plans", "sync", str(f), "--database-url", dsn, *extra])


def test_sync_upserts_idempotently_and_dry_run_changes_nothing(
    tmp_path: Path, plans_db: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert sync(tmp_path, plans_db, GOOD, "--dry-run") == 0
    assert "would be created gold_monthly" in capsys.readouterr().out
    assert "gold_monthly" not in rows(plans_db)

    assert sync(tmp_path, plans_db, GOOD) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "created=2 updated=0 unchanged=0 deactivated=0"
    got = rows(plans_db)
    assert got["gold_monthly"] == ("paystack", "paid", 500000, "NGN", "monthly", "PLN_gold_monthly_1", True)
    assert got["gold_ios"] == ("revenuecat", "paid", 999, "USD", "annually", "com.example.gold", True)

    assert sync(tmp_path, plans_db, GOOD) == 0  # again: nothing to do
    assert capsys.readouterr().out.strip() == "created=0 updated=0 unchanged=2 deactivated=0"

    assert sync(tmp_path, plans_db, GOOD.replace("500000", "550000")) == 0  # a new price
    assert "updated gold_monthly" in capsys.readouterr().out
    assert rows(plans_db)["gold_monthly"][2] == 550000

    # a plan the file no longer names is retired (never deleted: subscriptions name it), among
    # the plans of the providers the file is about
    only_ios = GOOD[GOOD.index("[[plan]]\ncode = \"gold_ios\""):]
    silver = only_ios.replace("gold", "silver")
    assert sync(tmp_path, plans_db, only_ios + silver) == 0
    capsys.readouterr()
    assert sync(tmp_path, plans_db, only_ios, "--deactivate-missing") == 0
    assert capsys.readouterr().out.splitlines() == ["deactivated silver_ios",
                                                    "created=0 updated=0 unchanged=1 deactivated=1"]
    got = rows(plans_db)
    assert got["silver_ios"][-1] is False
    assert got["gold_monthly"][-1] is True and got["pro_monthly"][-1] is True  # Paystack's: not this file's

    assert main(["plans", "list", "--database-url", plans_db]) == 0
    listed = capsys.readouterr().out
    assert "gold_ios  revenuecat  com.example.gold  999 USD  annually  paid" in listed
    assert "silver_ios  revenuecat  com.example.silver  999 USD  annually  paid  (inactive)" in listed


def test_every_problem_of_a_file_is_reported_at_once_and_nothing_written(
    tmp_path: Path, plans_db: str, capsys: pytest.CaptureFixture[str],
) -> None:
    bad = """
[[plan]]
code = "bad one"
provider = "stripe"
amount = 2000.50
currency = "ngn"
interval = "hourly"
tier = "gold"
colour = "red"

[[plan]]
code = "staff"
provider = "revenuecat"
amount = 100
currency = "USD"
interval = "monthly"
tier = "admin"

[[plan]]
code = "ok_but_no_paystack_code"
amount = 100
currency = "NGN"
interval = "monthly"
tier = "paid"
"""
    before = rows(plans_db)
    assert sync(tmp_path, plans_db, bad) == 1
    err = capsys.readouterr().err
    for words in ("plan 1 (bad one): unknown key 'colour'", "code must be", "provider must be one of paystack, revenuecat",
                  "amount must be a whole number", "NGN 2,000 is 200000 kobo", "currency must be a three-letter",
                  "interval must be one of", "hourly plans are for its tests", "tier must be one of free, paid",
                  "plan 3 (ok_but_no_paystack_code): provider_plan_code is required for a Paystack plan",
                  "plan 2 (staff): tier must be one of free, paid, got 'admin'"):
        assert words in err, words
    assert rows(plans_db) == before


@pytest.mark.parametrize(("text", "words"), [
    ("this is = = not toml", "not valid TOML"),
    ("", "no plans"),
    (GOOD + GOOD.replace("PLN_gold_monthly_1", "PLN_other").replace("com.example.gold", "com.example.other"),
     "code 'gold_monthly' is also plan 1's"),
    (GOOD.replace("com.example.gold", "PLN_gold_monthly_1"), "provider_plan_code 'PLN_gold_monthly_1' is also plan 1's"),
])
def test_file_level_problems(text: str, words: str) -> None:
    with pytest.raises(plans.PlanFileError, match=words):
        plans.parse(text)


def test_a_missing_file_or_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["plans", "sync", str(tmp_path / "nope.toml"), "--database-url", "postgresql://x@127.0.0.1:1/x"]) == 1
    assert "cannot read" in capsys.readouterr().err
    f = tmp_path / "plans.toml"
    f.write_text(GOOD)
    assert main(["plans", "sync", str(f), "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no database" in err and len(err.strip().splitlines()) == 1


def test_the_demo_plans_are_valid() -> None:
    demo = plans.parse(plans.DEMO_PLANS)
    assert {p.code for p in demo} >= {"pro_monthly", "pro_yearly"}
    assert all(p.provider_plan_code for p in demo)
