"""Ages on awkward dates: the deck counts ages on the day of the function's clock (UTC),
the same day its cursor carries, so a birthday today, tomorrow or on 29 February gives the
age a person would say, on month ends, year ends and leap days alike."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from tests.functions.recommendations.conftest import World


def years_before(day: date, years: int) -> date:
    """The same calendar day `years` earlier (28 February for a 29 February that is not)."""
    year = day.year - years
    return day.replace(year=year, day=min(day.day, calendar.monthrange(year, day.month)[1]))


def age_on(day: date, birth: date) -> int:
    """What people mean by age: a year older on the birthday (on 1 March for someone born on
    29 February, in a year without one)."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def cards(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return r.json()["data"]["candidates"]  # type: ignore[no-any-return]


async def test_ages_on_edge_dates(on_edge_dates: datetime, deck: Any, world: World, make_token: Any) -> None:
    today = datetime.now(UTC).date()
    assert today == on_edge_dates.date() or today == on_edge_dates.date() + timedelta(days=1)
    thirty = years_before(today, 30)
    births = {
        "birthday_today": thirty,
        "birthday_tomorrow": thirty + timedelta(days=1),
        "birthday_yesterday": thirty - timedelta(days=1),
        "leapling": date(1996, 2, 29),
        "leapling_young": date(2000, 2, 29),
    }
    for name, birth in births.items():
        await world.person(name, birthdate=birth)
    expected = {name: age_on(today, birth) for name, birth in births.items()}
    assert expected["birthday_today"] == 30 and expected["birthday_tomorrow"] == 29

    token = make_token(world.me)
    shown = {world.names([c])[0]: c["age"] for c in cards(await deck(token, limit=50, min_age=18, max_age=99))}
    assert shown == expected
    # the age filter agrees with the ages shown, at both ends of the range
    for lo, hi in ((30, 30), (29, 29), (26, 30), (31, 40)):
        got = set(world.names(cards(await deck(token, limit=50, min_age=lo, max_age=hi))))
        assert got == {n for n, a in expected.items() if lo <= a <= hi}, (lo, hi)
