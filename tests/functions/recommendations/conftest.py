"""Helpers for the recommendations tests: a small world of profiles at its own spot of the
South Pacific (every query filters by distance, so other tests' users never show up), and
the function driven in process."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from functions.recommendations.handler import fn
from functions.recommendations.models import Deck
from tests import factories as f

URL = "/functions/v1/recommendations"


def born(age: int) -> date:
    """A birthdate that makes someone `age` today (and not about to turn a year older)."""
    return date.today() - timedelta(days=int(365.25 * age) + 40)


def unit(angle_deg: float) -> list[float]:
    """A 64-d unit vector at `angle_deg` from the first axis: cosine similarity = cos(angle)."""
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)] + [0.0] * 62


@dataclass
class World:
    dsn: str
    lat: float
    lon: float
    me: str = ""
    people: dict[str, str] = field(default_factory=dict)

    async def person(self, name: str, *, km: float = 1.0, **fields: Any) -> str:
        """A man aged 30 interested in women, `km` north of the caller, unless overridden."""
        values: dict[str, Any] = {
            "gender": "man", "birthdate": born(30), "interested_in": ["woman"], "score": 0.5,
            "lat": self.lat + km / 111.195, "lon": self.lon, "display_name": name,
            "bio": f"I am {name}", "photos": [{"bucket": "avatars", "key": f"avatars/{name}.jpg"}],
            "monthly_budget": 1234, **fields,
        }
        uid = await f.create_user(self.dsn, **values)
        self.people[name] = uid
        return uid

    def names(self, cards: list[dict[str, Any]]) -> list[str]:
        by_id = {v: k for k, v in self.people.items()}
        return [by_id.get(c["id"], c["id"]) for c in cards]


#: each test's world gets its own cell of a grid over the South Pacific, 3 degrees of latitude
#: (333 km) and 4 of longitude apart, so no deck query (at most 100 km) reaches another world
_CELLS = itertools.count()


@pytest.fixture
async def world(database_url: str) -> World:
    n = next(_CELLS) % 170
    w = World(database_url, lat=-60 + 3 * (n % 10) + 0.5, lon=-170 + 4 * (n // 10) + 0.5)
    w.me = await f.create_user(
        database_url, gender="woman", birthdate=born(30), interested_in=["man"], pref_min_age=25, pref_max_age=40,
        lat=w.lat, lon=w.lon, embedding=unit(0),
    )
    return w


@pytest.fixture
def deck(client_for: Any) -> Any:
    """deck(token, **params) -> httpx.Response; settings overrides via deck.configure(**s)."""
    state: dict[str, httpx.AsyncClient] = {}

    def configure(**overrides: Any) -> httpx.AsyncClient:
        state["client"] = client_for(fn, **overrides)
        return state["client"]

    async def call(token: str, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        if "client" not in state:
            configure()
        params.setdefault("max_distance_km", 50)
        params = {k: v for k, v in params.items() if v is not None}
        r = await state["client"].get(URL, params=params, headers={"Authorization": f"Bearer {token}", **(headers or {})})
        if r.status_code == 200:
            Deck.model_validate(r.json()["data"])
        return r

    call.configure = configure  # type: ignore[attr-defined]
    return call


async def all_pages(deck: Any, token: str, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    for _ in range(50):
        r = await deck(token, limit=limit, cursor=cursor, **params)
        assert r.status_code == 200, r.text
        pages.append(r.json()["data"]["candidates"])
        cursor = r.json()["data"]["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("the deck never ended")
