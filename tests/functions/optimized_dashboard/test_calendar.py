"""The dashboard's calendar on awkward dates and in the user's own time zone: every period
starts at local midnight (DST included), a purchase one second before a start is outside,
one at the start is inside, and the month-end projection rounds as documented.

Expectations are computed here with zoneinfo, independently of the SQL."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests import factories as f

ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Seoul", "Pacific/Chatham"]


def local_starts(now: datetime, tz: ZoneInfo) -> dict[str, datetime]:
    """Each range's first instant (UTC), by the user's calendar."""
    local = now.astimezone(tz)
    q_month = 3 * ((local.month - 1) // 3) + 1
    at = lambda y, m: datetime(y, m, 1, tzinfo=tz).astimezone(UTC)  # noqa: E731
    return {
        "week": now - timedelta(days=7),
        "month": at(local.year, local.month),
        "quarter": at(local.year, q_month),
        "year": at(local.year, 1),
    }


@pytest.mark.parametrize("zone", ZONES)
async def test_periods_start_at_local_midnight(
    dash: Any, database_url: str, make_token: Any, on_edge_dates: datetime, zone: str
) -> None:
    tz = ZoneInfo(zone)
    now = datetime.now(UTC)
    uid = await f.create_user(database_url, timezone=zone)
    starts = local_starts(now, tz)
    # a purchase exactly at each start (inside) and one second before it (outside); amounts
    # are powers of two, so each range's total says exactly which ones it counted
    placed: list[tuple[datetime, int]] = []
    for i, name in enumerate(("month", "quarter", "year")):
        placed += [(starts[name], 2 ** (2 * i)), (starts[name] - timedelta(seconds=1), 2 ** (2 * i + 1))]
    placed.append((now - timedelta(minutes=1), 64))
    for when, amount in placed:
        await f.add_purchase(database_url, uid, amount, purchased_at=when)
    token = make_token(uid)
    for name, start in starts.items():
        body = (await dash(token, range=name)).json()
        assert body["data"]["range"]["timezone"] == zone
        end = datetime.fromisoformat(body["data"]["range"]["end"].replace("Z", "+00:00"))
        assert abs((end - now).total_seconds()) < 60  # the function's clock reached the SQL
        expected = sum(amount for when, amount in placed if start <= when <= end)
        assert body["data"]["user_stats"]["total_spent"] == f"{expected}.00", (name, start)


@pytest.mark.parametrize("zone", ZONES)
async def test_days_remaining_and_projection_follow_the_local_month(
    dash: Any, database_url: str, make_token: Any, on_edge_dates: datetime, zone: str
) -> None:
    tz = ZoneInfo(zone)
    now = datetime.now(UTC)
    uid = await f.create_user(database_url, timezone=zone)
    await f.set_budget(database_url, uid, "100.00")
    month_start = local_starts(now, tz)["month"]
    await f.add_purchase(database_url, uid, "70.29", purchased_at=month_start + (now - month_start) / 2)
    budget = (await dash(make_token(uid))).json()["data"]["budget_status"]
    local = datetime.now(UTC).astimezone(tz)
    days = calendar.monthrange(local.year, local.month)[1]
    assert budget["days_remaining"] == days - local.day
    projected = Decimal("70.29") + Decimal("70.29") / local.day * (days - local.day)
    # documented: SQL round(), half away from zero
    assert budget["projected_spend"] == str(projected.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
