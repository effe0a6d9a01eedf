"""GET / POST /functions/v1/optimized-dashboard over HTTP, in process, real Postgres and Redis."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from tests import factories as f


def month_start(now: datetime, back: int = 0) -> datetime:
    y, m = now.year, now.month - back
    while m < 1:
        y, m = y - 1, m + 12
    return datetime(y, m, 1, tzinfo=UTC)


async def test_a_token_is_required(dash: Any) -> None:
    r = await dash(None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "AUTH_REQUIRED"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_user_id_is_refused_never_honoured(dash: Any, database_url: str, make_token: Any, method: str) -> None:
    me = await f.create_user(database_url)
    other = await f.create_user(database_url)
    r = await dash(make_token(me), method, user_id=other)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "VALIDATION_ERROR" and "user_id is not accepted" in err["message"]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_bad_input_is_a_400(dash: Any, make_token: Any, method: str) -> None:
    token = make_token()
    assert (await dash(token, method, range="decade")).status_code == 400
    assert (await dash(token, method, colour="red")).status_code == 400


async def test_a_service_token_has_no_dashboard(dash: Any, make_token: Any) -> None:
    r = await dash(make_token("service_role", role="service_role"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "USER_TOKEN_REQUIRED"


async def test_empty_account_is_zeros_not_an_error(dash: Any, database_url: str, make_token: Any) -> None:
    uid = await f.create_user(database_url)
    r = await dash(make_token(uid))
    assert r.status_code == 200
    body = r.json()
    data, meta = body["data"], body["metadata"]
    assert data["user_stats"]["total_spent"] == "0.00" and data["user_stats"]["purchases_count"] == 0
    assert data["recent_purchases"] == [] and data["artist_breakdown"] == [] and data["goals"] == []
    assert data["budget_status"]["monthly_budget"] == "200.00" and data["budget_status"]["budget_source"] == "default"
    assert "analytics" not in data
    assert meta["user_tier"] == "free" and meta["cache_status"] == "miss"
    assert meta["generated_at"].endswith("Z")
    assert set(meta["rate_limit"]) == {"limit", "remaining", "reset"} and meta["rate_limit"]["remaining"] == 99


async def test_a_token_with_no_user_rows_at_all(dash: Any, make_token: Any) -> None:
    r = await dash(make_token())  # signed in, but no auth.users / profile rows here
    assert r.status_code == 200 and r.json()["data"]["user_stats"]["currency"] == "USD"


async def test_the_whole_dashboard(dash: Any, database_url: str, make_token: Any, on_edge_dates: datetime) -> None:
    uid = await f.create_user(database_url, tier="paid", monthly_budget=Decimal("999"))
    twin_a = await f.add_artist(database_url, "Ji", "Novawave")
    twin_b = await f.add_artist(database_url, "Ji", "Starlight")  # same name, another artist
    for a in (twin_a, twin_b):
        await f.follow(database_url, uid, a)
    await f.set_budget(database_url, uid, "100.00")  # wins over the profile's 999
    now = datetime.now(UTC)
    m0 = month_start(now)
    inside = [m0 + (now - m0) * k / 10 for k in range(1, 10)]  # this month, before now
    await f.add_purchase(database_url, uid, "0.10", artist_id=twin_a, category="photocard", purchased_at=inside[0])
    await f.add_purchase(database_url, uid, "0.20", artist_id=twin_a, category="photocard", purchased_at=inside[1])
    await f.add_purchase(database_url, uid, "60.00", artist_id=twin_b, category="concert", purchased_at=inside[2])
    await f.add_purchase(database_url, uid, "9.99", category="other", purchased_at=inside[3])
    await f.add_purchase(database_url, uid, "5000", currency="KRW", artist_id=twin_b, purchased_at=inside[4])
    for back, amount in zip(range(1, 7), (30, 30, 30, 10, 10, 10), strict=True):
        await f.add_purchase(database_url, uid, amount, artist_id=twin_a, purchased_at=month_start(now, back) + timedelta(days=14, hours=12))
    goal = await f.add_goal(database_url, uid, "See Novawave live", "500.00", current_amount=Decimal("125.00"), artist_id=twin_a)
    await f.add_goal(database_url, uid, "Done already", "50", current_amount=Decimal("50"), status="completed")

    r = await dash(make_token(uid, tier="paid"))
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert r.json()["metadata"]["user_tier"] == "paid"

    stats = d["user_stats"]
    assert stats["total_spent"] == "70.29"  # 0.10 + 0.20 + 60.00 + 9.99, exactly
    assert stats["purchases_count"] == 5
    assert stats["totals_by_currency"] == [
        {"currency": "USD", "total_spent": "70.29", "purchases_count": 4},
        {"currency": "KRW", "total_spent": "5000.00", "purchases_count": 1},
    ]
    assert (stats["active_goals"], stats["followed_artists"]) == (1, 2)
    assert stats["monthly_average"] == "20.00"
    assert (stats["spending_trend"], stats["trend_change_percent"]) == ("up", 200.0)

    recent = d["recent_purchases"]
    assert len(recent) == 10
    assert [p["purchased_at"] for p in recent] == sorted((p["purchased_at"] for p in recent), reverse=True)
    assert recent[0]["amount"] == "5000.00" and recent[0]["currency"] == "KRW" and recent[0]["artist_name"] == "Ji"
    assert recent[1]["artist_id"] is None and recent[1]["artist_name"] is None

    assert [(a["artist_id"], a["currency"], a["total_spent"], a["purchase_count"], a["percentage"]) for a in d["artist_breakdown"]] == [
        (twin_b, "USD", "60.00", 1, 85.4),
        (None, "USD", "9.99", 1, 14.2),
        (twin_a, "USD", "0.30", 2, 0.4),
        (twin_b, "KRW", "5000.00", 1, 100.0),
    ]

    budget = d["budget_status"]
    assert (budget["budget_source"], budget["monthly_budget"], budget["current_spent"]) == ("budget", "100.00", "70.29")
    assert (budget["remaining"], budget["percentage_used"], budget["alert_level"]) == ("29.71", 70.3, "medium")
    days = calendar.monthrange(now.year, now.month)[1]
    assert budget["days_remaining"] == days - now.day
    expected = Decimal("70.29") + Decimal("70.29") / now.day * (days - now.day)
    # SQL round() rounds half away from zero; Decimal's default would round half to even
    assert budget["projected_spend"] == str(expected.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))

    [g] = d["goals"]
    assert (g["id"], g["artist_name"], g["progress_percent"], g["remaining_amount"]) == (goal, "Ji", 25.0, "375.00")

    a = d["analytics"]
    assert {c["category"] for c in a["category_breakdown"] if c["currency"] == "USD"} == {"photocard", "concert", "other"}
    assert sum(Decimal(w["total_spent"]) for w in a["weekday_pattern"]) == Decimal("70.29")
    assert a["month_over_month"]["this_month_to_date"] == "70.29"
    assert a["month_over_month"]["last_month_total"] == "30.00"


async def test_ranges(dash: Any, database_url: str, make_token: Any, on_edge_dates: datetime) -> None:
    uid = await f.create_user(database_url)
    now = datetime.now(UTC)
    dated = [
        (now - timedelta(days=1), 1),
        (now - timedelta(days=8), 2),
        (datetime(now.year, 1, 1, 0, 0, 1, tzinfo=UTC), 4),
        (datetime(now.year - 1, 12, 31, 23, 59, tzinfo=UTC), 8),
    ]
    for when, amount in dated:
        await f.add_purchase(database_url, uid, amount, purchased_at=when)
    starts = {
        "week": now - timedelta(days=7),
        "month": month_start(now),
        "quarter": datetime(now.year, 3 * ((now.month - 1) // 3) + 1, 1, tzinfo=UTC),
        "year": datetime(now.year, 1, 1, tzinfo=UTC),
    }
    token = make_token(uid)
    for name, start in starts.items():
        body = (await dash(token, range=name)).json()
        assert body["data"]["range"]["name"] == name
        expected = sum(v for t, v in dated if t >= start)
        assert body["data"]["user_stats"]["total_spent"] == f"{expected}.00", name


async def test_analytics_are_for_paid_and_admin_only(dash: Any, database_url: str, make_token: Any) -> None:
    free = await f.create_user(database_url, tier="free")
    admin = await f.create_user(database_url, tier="admin")
    assert "analytics" not in (await dash(make_token(free))).json()["data"]
    body = (await dash(make_token(admin, tier="admin"))).json()
    assert "analytics" in body["data"] and body["metadata"]["user_tier"] == "admin"
    assert "analytics" not in (await dash(make_token(admin, tier="admin"), include_analytics="false")).json()["data"]
    # a token claiming paid does not unlock what the database does not record
    assert "analytics" not in (await dash(make_token(free, tier="paid"))).json()["data"]


async def test_post_for_existing_clients(dash: Any, database_url: str, make_token: Any, on_edge_dates: datetime) -> None:
    uid = await f.create_user(database_url)
    await f.add_purchase(database_url, uid, "3.30", purchased_at=datetime.now(UTC) - timedelta(hours=1))
    token = make_token(uid)
    got = await dash(token, range="week")
    posted = await dash(token, "POST", time_range="week", include_predictions=True)  # the old client's body
    assert posted.status_code == 200
    assert posted.json()["data"] == got.json()["data"]
    assert posted.json()["metadata"]["cache_status"] == "hit"  # the GET's entry
    assert posted.headers["cache-control"] == "private, no-store"
    fresh = await dash(token, "POST", range="quarter")
    assert fresh.json()["metadata"]["cache_status"] == "miss"
    assert (await dash(token, "POST", range="quarter")).json()["metadata"]["cache_status"] == "hit"
    assert (await dash(token, range="quarter")).json()["metadata"]["cache_status"] == "hit"  # and the other way round
