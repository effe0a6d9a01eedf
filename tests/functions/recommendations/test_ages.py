"""Ages on awkward dates: the deck counts ages on the day of the function's clock (UTC),
the same day its cursor carries, so a birthday today, tomorrow or on 29 February gives the
age a person would say, on month ends, year ends and leap days alike."""

from __future__ import annotations

import base64
import calendar

import orjson
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from functions.recommendations.cursor import decode
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


async def test_a_cursor_cannot_move_the_day_ages_are_counted_on(deck: Any, world: World, make_token: Any) -> None:
    """A cursor's time decides the day of the ages (filters and cards); it is not signed, so
    a forged one dated years back would pass a 45-year-old as 25, and stepping it day by day
    would find a birthdate. Only a time within the last day is accepted."""
    for name in ("older", "older2"):
        await world.person(name, birthdate=years_before(datetime.now(UTC).date(), 45))
    token = make_token(world.me)
    first = await deck(token, limit=1, min_age=18, max_age=99)
    assert [c["age"] for c in cards(first)] == [45]
    raw = first.json()["data"]["next_cursor"]
    digest = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))[-1]  # the deck's own
    issued = decode(raw, digest, datetime.now(UTC))
    now = datetime.now(UTC)

    def at(when: datetime) -> str:
        return replace(issued, as_of=when).encode()

    assert (await deck(token, limit=1, min_age=18, max_age=99, cursor=at(issued.as_of))).status_code == 200
    for when in (now - timedelta(days=365 * 20), now - timedelta(hours=25), now + timedelta(hours=1)):
        r = await deck(token, limit=1, min_age=18, max_age=99, cursor=at(when))
        assert r.status_code == 400 and "expired" in r.json()["error"]["message"], (when, r.text)
    # within the day it is accepted: a deck started before midnight pages on after it
    assert (await deck(token, limit=1, min_age=18, max_age=99, cursor=at(now - timedelta(hours=23)))).status_code == 200
