"""`public.spending_dashboard()` on its own: the rules, at a fixed `now`, as the user (RLS)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests import factories as f
from tests.functions.optimized_dashboard.conftest import dashboard_sql, principal

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)  # day 10 of a 31-day month


def at(day: int, month: int = 3, year: int = 2025, hour: int = 9) -> datetime:
    return datetime(year, month, day, hour, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "spent,percent,level",
    [("0.00", 0.0, "low"), ("50.00", 50.0, "low"), ("50.01", 50.0, "medium"), ("75.00", 75.0, "medium"),
     ("75.01", 75.0, "high"), ("90.01", 90.0, "critical"), ("120.00", 120.0, "critical")],
)
async def test_alert_level_thresholds(db: Any, database_url: str, spent: str, percent: float, level: str) -> None:
    uid = await f.create_user(database_url)
    await f.set_budget(database_url, uid, "100.00")
    if Decimal(spent) > 0:
        await f.add_purchase(database_url, uid, spent, purchased_at=at(3))
    budget = (await dashboard_sql(db, uid, now=NOW))["budget_status"]
    assert budget["alert_level"] == level
    assert budget["current_spent"] == spent
    assert budget["percentage_used"] == percent
    assert budget["remaining"] == str(Decimal("100.00") - Decimal(spent))


async def test_budget_projection_and_days(db: Any, database_url: str) -> None:
    uid = await f.create_user(database_url)
    await f.set_budget(database_url, uid, "300.00")
    await f.add_purchase(database_url, uid, "30.00", purchased_at=at(1))
    await f.add_purchase(database_url, uid, "20.00", purchased_at=at(10, hour=11))
    await f.add_purchase(database_url, uid, "99.00", purchased_at=at(28, month=2))  # last month
    await f.add_purchase(database_url, uid, "7.00", purchased_at=at(20))  # future-dated: not yet
    budget = (await dashboard_sql(db, uid, now=NOW))["budget_status"]
    # 50 spent over 10 days (today included), 21 days left: 50 + 5 x 21
    assert budget == {
        "currency": "USD", "budget_source": "budget", "monthly_budget": "300.00", "current_spent": "50.00",
        "remaining": "250.00", "percentage_used": 16.7, "days_remaining": 21, "projected_spend": "155.00",
        "alert_level": "low",
    }


async def test_budget_sources_and_currency(db: Any, database_url: str) -> None:
    uid = await f.create_user(database_url, currency="EUR")
    await f.add_purchase(database_url, uid, "10.00", currency="EUR", purchased_at=at(2))
    await f.add_purchase(database_url, uid, "5.00", currency="USD", purchased_at=at(2))
    doc = await dashboard_sql(db, uid, now=NOW, default_budget="150")
    assert doc["budget_status"]["budget_source"] == "default"
    assert (doc["budget_status"]["monthly_budget"], doc["budget_status"]["currency"]) == ("150.00", "EUR")
    assert doc["budget_status"]["current_spent"] == "10.00"  # the USD purchase is not added in

    async with f.connection(database_url) as c:
        await c.execute("update public.profiles set monthly_budget = 80 where id = %s", (uid,))
    doc = await dashboard_sql(db, uid, now=NOW)
    assert (doc["budget_status"]["budget_source"], doc["budget_status"]["monthly_budget"]) == ("profile", "80.00")

    await f.set_budget(database_url, uid, "40.00", currency="USD")  # the budget row wins, in its currency
    doc = await dashboard_sql(db, uid, now=NOW)
    budget = doc["budget_status"]
    assert (budget["budget_source"], budget["monthly_budget"], budget["currency"]) == ("budget", "40.00", "USD")
    assert budget["current_spent"] == "5.00"
    assert doc["user_stats"]["currency"] == "EUR" and doc["user_stats"]["total_spent"] == "10.00"
    assert doc["user_stats"]["totals_by_currency"] == [
        {"currency": "EUR", "total_spent": "10.00", "purchases_count": 1},
        {"currency": "USD", "total_spent": "5.00", "purchases_count": 1},
    ]


@pytest.mark.parametrize(
    "recent,earlier,trend,change",
    [((30, 30, 30), (10, 10, 10), "up", 200.0), ((10, 10, 10), (30, 30, 30), "down", -66.7),
     ((32, 32, 32), (30, 30, 30), "stable", 6.7), ((0, 0, 0), (0, 0, 0), "stable", None),
     ((5, 0, 0), (0, 0, 0), "up", None), ((0, 0, 0), (5, 0, 0), "down", -100.0)],
)
async def test_monthly_average_and_trend_rule(
    db: Any, database_url: str, recent: tuple[int, ...], earlier: tuple[int, ...], trend: str, change: float | None
) -> None:
    uid = await f.create_user(database_url)
    # months before March 2025: Feb, Jan, Dec (recent 3), Nov, Oct, Sep (earlier 3)
    months = [(2, 2025), (1, 2025), (12, 2024), (11, 2024), (10, 2024), (9, 2024)]
    for (month, year), amount in zip(months, recent + earlier, strict=True):
        if amount:
            await f.add_purchase(database_url, uid, amount, purchased_at=at(15, month, year))
    await f.add_purchase(database_url, uid, "1000.00", purchased_at=at(15, 8, 2024))  # 7 months back: out
    stats = (await dashboard_sql(db, uid, now=NOW))["user_stats"]
    assert stats["monthly_average"] == str((Decimal(sum(recent) + sum(earlier)) / 6).quantize(Decimal("0.01")))
    assert (stats["spending_trend"], stats["trend_change_percent"]) == (trend, change)


async def test_ranges_follow_the_users_time_zone(db: Any, database_url: str) -> None:
    uid = await f.create_user(database_url, timezone="Asia/Seoul")
    now = datetime(2025, 3, 31, 16, 0, tzinfo=UTC)  # 1 April, 01:00 in Seoul
    await f.add_purchase(database_url, uid, "1.00", purchased_at=datetime(2025, 3, 31, 15, 30, tzinfo=UTC))  # April in Seoul
    await f.add_purchase(database_url, uid, "2.00", purchased_at=datetime(2025, 3, 31, 14, 0, tzinfo=UTC))  # 31 March in Seoul
    await f.add_purchase(database_url, uid, "4.00", purchased_at=datetime(2024, 12, 31, 16, 0, tzinfo=UTC))  # 1 Jan in Seoul
    await f.add_purchase(database_url, uid, "8.00", purchased_at=datetime(2024, 12, 31, 14, 0, tzinfo=UTC))  # 2024 in Seoul
    totals = {}
    for r in ("week", "month", "quarter", "year"):
        doc = await dashboard_sql(db, uid, range=r, now=now)
        totals[r] = doc["user_stats"]["total_spent"]
        assert doc["range"]["timezone"] == "Asia/Seoul"
    # week: the last 7 days; month and quarter: April (Q2) in Seoul; year: 2025 in Seoul
    assert totals == {"week": "3.00", "month": "1.00", "quarter": "1.00", "year": "7.00"}
    budget = (await dashboard_sql(db, uid, now=now))["budget_status"]
    assert budget["days_remaining"] == 29 and budget["current_spent"] == "1.00"

    async with f.connection(database_url) as c:
        await c.execute("update public.profiles set timezone = 'Mars/Olympus_Mons' where id = %s", (uid,))
    doc = await dashboard_sql(db, uid, now=now)  # an unknown zone is UTC, not an error
    assert doc["range"]["timezone"] == "UTC" and doc["user_stats"]["total_spent"] == "3.00"


async def test_analytics_need_the_recorded_tier(db: Any, database_url: str) -> None:
    free = await f.create_user(database_url, tier="free")
    paid = await f.create_user(database_url, tier="paid")
    for uid in (free, paid):
        await f.add_purchase(database_url, uid, "12.50", category="album", purchased_at=at(3))  # a Monday
        await f.add_purchase(database_url, uid, "7.50", category="merch", purchased_at=at(8))  # a Saturday
        await f.add_purchase(database_url, uid, "3.00", category="merch", purchased_at=at(8, 2))  # last month
        await f.add_purchase(database_url, uid, "2000", category="merch", currency="KRW", purchased_at=at(4))
    assert "analytics" not in await dashboard_sql(db, free, analytics=True, now=NOW)
    assert "analytics" not in await dashboard_sql(db, paid, analytics=False, now=NOW)
    a = (await dashboard_sql(db, paid, analytics=True, now=NOW))["analytics"]
    assert a["category_breakdown"] == [
        {"category": "album", "currency": "USD", "total_spent": "12.50", "purchase_count": 1, "percentage": 62.5},
        {"category": "merch", "currency": "USD", "total_spent": "7.50", "purchase_count": 1, "percentage": 37.5},
        {"category": "merch", "currency": "KRW", "total_spent": "2000.00", "purchase_count": 1, "percentage": 100.0},
    ]
    days = {d["name"]: (d["total_spent"], d["purchase_count"]) for d in a["weekday_pattern"]}
    assert [d["weekday"] for d in a["weekday_pattern"]] == [1, 2, 3, 4, 5, 6, 7]
    assert days["Monday"] == ("12.50", 1) and days["Saturday"] == ("7.50", 1) and days["Tuesday"] == ("0.00", 0)
    assert a["month_over_month"] == {
        "this_month_to_date": "20.00", "last_month_same_period": "3.00", "last_month_total": "3.00", "change_percent": 566.7,
    }


async def test_empty_account_and_no_profile(db: Any, database_url: str) -> None:
    uid = await f.create_user(database_url)
    async with f.connection(database_url) as c:
        await c.execute("delete from public.profiles where id = %s", (uid,))
    doc = await dashboard_sql(db, uid, now=NOW)
    assert doc["user_stats"] == {
        "currency": "USD", "total_spent": "0.00", "purchases_count": 0, "totals_by_currency": [], "active_goals": 0,
        "followed_artists": 0, "monthly_average": "0.00", "spending_trend": "stable", "trend_change_percent": None,
    }
    assert doc["recent_purchases"] == [] and doc["artist_breakdown"] == [] and doc["goals"] == []
    assert doc["budget_status"]["budget_source"] == "default" and doc["budget_status"]["projected_spend"] == "0.00"


async def test_runs_under_rls_as_the_caller_only(db: Any, database_url: str) -> None:
    a = await f.create_user(database_url)
    b = await f.create_user(database_url)
    await f.add_purchase(database_url, b, "66.00", purchased_at=at(5))
    await f.add_goal(database_url, b, "B's goal")
    doc = await dashboard_sql(db, a, now=NOW)
    assert doc["user_stats"]["purchases_count"] == 0 and doc["goals"] == []
    assert (await dashboard_sql(db, b, now=NOW))["user_stats"]["total_spent"] == "66.00"
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # no user: refused, not someone's data
        await db.fetch("select public.spending_dashboard('month')", service=True)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        await db.fetch("select public.spending_dashboard('decade')", principal=principal(a))
    async with f.connection(database_url) as c:
        cur = await c.execute(
            "select has_function_privilege('anon', 'public.spending_dashboard(text, boolean, numeric, timestamptz)', 'execute')"
        )
        assert (await cur.fetchone()) == (False,)
