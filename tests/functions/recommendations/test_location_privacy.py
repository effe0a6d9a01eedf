"""Location privacy (0017b), attacked the way it was broken: through the recommendations
function (bisecting `max_distance_km`, reading `distance_km`) from several vantage points,
and through the REST path (moving oneself with a profile update).

The attack below locates a person to within a metre when distances leak (it is run against
an exact-distance oracle first, to show it is competent); against the deck it must miss by
at least 1 km. Stronger, and what makes that hold for every position: everything a caller
can observe is a function of the cells alone, so a person moved to another point of their
cell 2 km or more away gives every query the same answer, and whatever the attacker
concludes is at least 1 km off for one of the two.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.context import Principal
from shared.db import Database
from tests import factories as f
from tests.functions.recommendations.conftest import World, born

EARTH_M = 6371008.8  # the radius public.geo_distance_m uses
STEPS_KM = (5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200)

Query = Callable[[float], Awaitable[int | None]]


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_M * math.asin(min(1.0, math.sqrt(h)))


def moved(lat: float, lon: float, north_km: float, east_km: float) -> tuple[float, float]:
    return lat + north_km / 111.195, lon + east_km / (111.195 * math.cos(math.radians(lat)))


# -- the attack ------------------------------------------------------------------------------


async def bisect(query: Query, calls: int, lo: float = 0.001, hi: float = 200.0) -> tuple[float, int | None]:
    """The smallest max_distance_km at which the target shows, to the precision `calls`
    bisection steps give, and the distance the deck printed on its card."""
    shown = await query(hi)
    assert shown is not None, "the target must be within reach of every vantage point"
    for _ in range(calls - 1):
        mid = (lo + hi) / 2
        seen = await query(mid)
        if seen is None:
            lo = mid
        else:
            hi, shown = mid, seen
    return hi, shown


def trilaterate(observations: list[tuple[float, float, float]]) -> tuple[float, float]:
    """The point whose distances to the vantage points best fit the observed ones (least
    squares): a coarse grid around the vantage points, then shrinking local searches."""
    lat0 = sum(o[0] for o in observations) / len(observations)
    lon0 = sum(o[1] for o in observations) / len(observations)

    def cost(lat: float, lon: float) -> float:
        return sum((distance_m(lat, lon, vl, vn) - d * 1000) ** 2 for vl, vn, d in observations)

    best = min(
        (moved(lat0, lon0, n, e) for n in range(-60, 61, 2) for e in range(-60, 61, 2)), key=lambda p: cost(*p)
    )
    step_km = 2.0
    while step_km > 1e-5:
        around = [moved(*best, n * step_km, e * step_km) for n in (-1, 0, 1) for e in (-1, 0, 1)]
        nxt = min(around, key=lambda p: cost(*p))
        if nxt == best:
            step_km /= 2
        best = nxt
    return best


async def attack(queries: list[tuple[float, float, Query]], calls_each: int) -> tuple[tuple[float, float], list[Any]]:
    """Bisect from every vantage point, trilaterate. Returns the estimate and what was seen."""
    seen = []
    for lat, lon, query in queries:
        threshold, shown = await bisect(query, calls_each)
        seen.append((threshold, shown))
    observations = [(lat, lon, t) for (lat, lon, _), (t, _) in zip(queries, seen, strict=True)]
    return await asyncio.to_thread(trilaterate, observations), seen  # a search: off the event loop


def oracle(vantage: tuple[float, float], target: tuple[float, float]) -> Query:
    """The deck before 0017b: an exact radius filter and the distance in whole km."""

    async def query(r: float) -> int | None:
        d = distance_m(*vantage, *target)
        return max(1, round(d / 1000)) if d <= r * 1000 else None

    return query


# -- fixtures ----------------------------------------------------------------------------------


async def cell_of(dsn: str, lat: float, lon: float) -> tuple[float, float]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("select public.geo_cell_lat(%s), public.geo_cell_lon(%s, %s)", (lat, lat, lon))
        row = await cur.fetchone()
        assert row is not None
        return float(row[0]), float(row[1])


async def place(dsn: str, user_id: str, lat: float, lon: float) -> None:
    """Move a user now, as the service would (the cooldown aged first)."""
    await f.age_cell_moves(dsn, user_id)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("update public.profiles set lat = %s, lon = %s where id = %s", (lat, lon, user_id))


def deck_query(deck: Any, token: str, target: str) -> Query:
    async def query(r: float) -> int | None:
        resp = await deck(token, max_distance_km=r, limit=50)
        assert resp.status_code == 200, resp.text
        return next((c["distance_km"] for c in resp.json()["data"]["candidates"] if c["id"] == target), None)

    return query


async def attacker(world: World, lat: float, lon: float) -> str:
    return await f.create_user(world.dsn, gender="woman", birthdate=born(30), interested_in=["man"], lat=lat, lon=lon)


# -- tests -------------------------------------------------------------------------------------


async def test_the_attack_locates_to_a_metre_where_distances_leak() -> None:
    """The same attack code against the deck as it was before 0017b (exact filter)."""
    target = (-33.9, 151.2)
    vantages = [moved(*target, n, e) for n, e in ((9, -4), (-7, -8), (-3, 11), (12, 10))]
    estimate, _ = await attack([(*v, oracle(v, target)) for v in vantages], calls_each=50)
    assert distance_m(*estimate, *target) < 1.0


async def test_bisection_and_trilateration_miss_by_at_least_1_km(
    deck: Any, world: World, make_token: Any
) -> None:
    """Four vantage points, 50 calls each (200 calls), against the target at p, then at q:
    the other corner of p's cell, 3.4 km away. Every answer is the same for both, so the
    estimate is too; it is at least 1 km from each."""
    deck.configure(rate_limit_free=100_000)
    center = await cell_of(world.dsn, *moved(world.lat, world.lon, 1.5, 0))
    p, q = moved(*center, -1.2, -1.2), moved(*center, 1.2, 1.2)
    assert await cell_of(world.dsn, *p) == await cell_of(world.dsn, *q) == center
    assert distance_m(*p, *q) > 3300
    target = await world.person("target", lat=p[0], lon=p[1])
    vantages = [moved(*p, n, e) for n, e in ((9, -4), (-7, -8), (-3, 11), (12, 10))]
    queries = [(*v, deck_query(deck, make_token(await attacker(world, *v)), target)) for v in vantages]

    estimate_p, seen_p = await attack(queries, calls_each=50)
    await place(world.dsn, target, *q)
    estimate_q, seen_q = await attack(queries, calls_each=50)

    assert seen_p == seen_q and estimate_p == estimate_q
    # what the attacker saw: distance steps, and radii that converge on a step's edge
    assert all(shown in STEPS_KM and any(abs(t - s) < 1e-6 for s in STEPS_KM) for t, shown in seen_p), seen_p
    assert distance_m(*estimate_p, *p) >= 1000
    assert distance_m(*estimate_q, *q) >= 1000


async def test_moving_oneself_across_cell_edges_learns_only_the_cell(
    deck: Any, world: World, make_token: Any, database_url: str
) -> None:
    """An attacker walks east in 250 m steps across three cell edges (a sybil fleet needs no
    cooldown: aged here), moving itself through the REST path, and asks every radius step
    at each point. The answers depend on the attacker's cell only, and are the same with
    the target at either corner of its cell."""
    deck.configure(rate_limit_free=100_000)
    center = await cell_of(world.dsn, *moved(world.lat, world.lon, 1.5, 0))
    p, q = moved(*center, -1.2, -1.2), moved(*center, 1.2, 1.2)
    target = await world.person("walked_to", lat=p[0], lon=p[1])
    start = moved(*p, 4, -6)
    me = await attacker(world, *start)
    token = make_token(me)
    query = deck_query(deck, token, target)
    db = Database(database_url, max_size=1)

    async def walk() -> list[tuple[tuple[float, float], tuple[int | None, ...]]]:
        seen = []
        for i in range(40):
            lat, lon = moved(*start, 0, 0.25 * i)
            await f.age_cell_moves(world.dsn, me)
            async with db.as_user(Principal(user_id=me, role="authenticated")) as conn:
                await conn.execute("update public.profiles set lat = %s, lon = %s where id = %s", (lat, lon, me))
            seen.append((await cell_of(world.dsn, lat, lon), tuple([await query(r) for r in STEPS_KM[:5]])))
        return seen

    try:
        at_p = await walk()
        await place(world.dsn, target, *q)
        at_q = await walk()
    finally:
        await db.close()
    assert at_p == at_q
    by_cell: dict[tuple[float, float], set[tuple[int | None, ...]]] = {}
    for cell, answers in at_p:
        by_cell.setdefault(cell, set()).add(answers)
    assert len(by_cell) >= 3, "the walk crossed cell edges"
    assert all(len(answers) == 1 for answers in by_cell.values()), by_cell


async def test_without_a_radius_distance_filters_nobody(deck: Any, world: World, make_token: Any) -> None:
    """No max_distance_km, no distance filter (a null radius is not the first step)."""
    far = await world.person("far_and_old", km=150, birthdate=born(97))
    r = await deck(make_token(world.me), max_distance_km=None, min_age=97, max_age=97)
    assert [(c["id"], c["distance_km"]) for c in r.json()["data"]["candidates"]] in ([(far, 150)], [(far, 200)])


async def test_relocation_is_rate_limited_through_the_rest_path(
    deck: Any, world: World, make_token: Any, database_url: str
) -> None:
    """A user moving themself over the REST API: the exact position is theirs at once, the
    cell others are compared with moves at most once per 15 minutes, also across
    re-creating the profile."""
    viewer = make_token(world.me)
    him = await world.person("mover", km=1.0)
    db = Database(database_url, max_size=1)
    principal = Principal(user_id=him, role="authenticated")

    async def shown() -> int | None:
        r = await deck(viewer, max_distance_km=200, limit=50)
        return next((c["distance_km"] for c in r.json()["data"]["candidates"] if c["id"] == him), None)

    async def move_to(north_km: float) -> tuple[float, float]:
        lat, lon = moved(world.lat, world.lon, north_km, 0)
        async with db.as_user(principal) as conn:
            await conn.execute("update public.profiles set lat = %s, lon = %s where id = %s", (lat, lon, him))
            cur = await conn.execute("select lat, lon from public.profiles where id = %s", (him,))
            assert await cur.fetchone() == (lat, lon)  # the owner reads the exact position
        return lat, lon

    try:
        assert await shown() == 5
        await move_to(35)  # created a moment ago: the first move waits too
        assert await shown() == 5
        await f.age_cell_moves(world.dsn, him)
        await move_to(35)  # the next location write after the cooldown publishes it
        assert await shown() == 40
        await move_to(90)  # and the move after that waits again
        assert await shown() == 40
        # deleting and re-creating the profile does not start a new cooldown: the new
        # profile has no published cell (invisible to distance filters) until it is over
        async with db.as_user(principal) as conn:
            await conn.execute("delete from public.profiles where id = %s", (him,))
            lat, lon = moved(world.lat, world.lon, 90, 0)
            await conn.execute(
                "insert into public.profiles (id, gender, birthdate, interested_in, lat, lon) values (%s, 'man', %s, '{woman}', %s, %s)",
                (him, born(30), lat, lon),
            )
        assert await shown() is None
        await f.age_cell_moves(world.dsn, him)
        await move_to(90)
        assert await shown() == 100
    finally:
        await db.close()


@settings(max_examples=150, deadline=None)
@given(lat=st.floats(-89.999, 89.999), lon=st.floats(-180, 179.999))
async def test_every_position_has_a_twin_2_km_away_in_its_cell(database_url: str, lat: float, lon: float) -> None:
    """The grid's promise, everywhere (poles and antimeridian included): a position's cell
    centre is its own cell's (the grid is stable), and the cell holds a point at least 2 km
    away, so no answer computed from cells tells the two apart. Away from the polar caps
    the centre is within 2.2 km (the cell is about 3 km on a side)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "select c.lat, c.lon, public.geo_cell_lat(c.lat), public.geo_cell_lon(c.lat, c.lon)"
            " from (select public.geo_cell_lat(%(lat)s) as lat, public.geo_cell_lon(%(lat)s, %(lon)s) as lon) c",
            {"lat": lat, "lon": lon},
        )
        row = await cur.fetchone()
        assert row is not None
        c_lat, c_lon, again_lat, again_lon = row
        assert (again_lat, again_lon) == (c_lat, c_lon)
        if abs(lat) < 80:
            assert distance_m(lat, lon, c_lat, c_lon) <= 2200
        # a corner of the cell (a hair inside): the farthest of the four is the twin
        half_lat = 90.0 / 6671 * 0.999
        cur = await conn.execute(
            "select greatest(1, floor(360.0 * 111.195 * cos(radians(%s)) / 3.0))::bigint", (c_lat,)
        )
        cols = (await cur.fetchone())[0]  # type: ignore[index]
        half_lon = 180.0 / cols * 0.999
        corners = [(c_lat + a * half_lat, c_lon + b * half_lon) for a in (-1, 1) for b in (-1, 1)]
        twin = max(corners, key=lambda c: distance_m(lat, lon, *c))
        cur = await conn.execute(
            "select public.geo_cell_lat(%s), public.geo_cell_lon(%s, %s)", (twin[0], twin[0], twin[1])
        )
        assert await cur.fetchone() == (c_lat, c_lon)
        assert distance_m(lat, lon, *twin) >= 2000 or abs(c_lat) > 89.9  # (the polar caps are one cell)


@settings(max_examples=200, deadline=None)
@given(d_km=st.floats(0, 20_000), r_km=st.floats(0.001, 20_000))
async def test_the_radius_filter_and_the_shown_distance_agree(database_url: str, d_km: float, r_km: float) -> None:
    """A card within max_distance_km never says more than it (from the first step on), and
    the radius and the distance are both rounded to the same steps."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "select public.geo_distance_step_km(%s * 1000.0), public.geo_radius_step_km(%s)", (d_km, r_km)
        )
        shown, radius = await cur.fetchone()  # type: ignore[misc]
    assert shown >= d_km and (shown in STEPS_KM or shown % 100 == 0)
    assert radius in STEPS_KM or radius % 100 == 0
    passes = d_km * 1000.0 <= radius * 1000.0
    assert passes == (shown <= max(r_km, 5))
