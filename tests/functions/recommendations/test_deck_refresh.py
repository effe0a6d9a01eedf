"""Cached decks and the changes that make someone ineligible (0017b): blocks and unblocks
either way, hiding, deleting, preferences and moves, on both sides, through the REST path
(role `authenticated` + claims, as PostgREST writes) or the service, always with the cache
warm. A cached page is re-checked on every read, so nobody ineligible is ever served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.context import Principal
from shared.db import Database
from tests import factories as f
from tests.functions.recommendations.conftest import World, born


@pytest.fixture(scope="module")
async def rest(database_url: str) -> AsyncIterator[Database]:
    """Writes as a signed-in user, the way the REST API makes them."""
    db = Database(database_url, max_size=2)
    yield db
    await db.close()


async def as_user(rest: Database, user_id: str, sql: str, *params: Any) -> int:
    async with rest.as_user(Principal(user_id=user_id, role="authenticated")) as conn:
        cur = await conn.execute(sql, params)
        return cur.rowcount


async def service(dsn: str, sql: str, *params: Any) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql, params)


async def warm(deck: Any, token: str, filter_sets: list[dict[str, Any]], limit: int = 1) -> list[dict[str, Any]]:
    """Every page of every filter set, read twice: the second read is a hit. Returns the
    requests, to be asked again."""
    requests = []
    for params in filter_sets:
        cursor = None
        for _ in range(20):
            req = {**params, "limit": limit, "cursor": cursor}
            first = await deck(token, **req)
            assert first.status_code == 200, first.text
            assert (await deck(token, **req)).headers["x-cache-status"] == "hit"
            requests.append(req)
            cursor = first.json()["data"]["next_cursor"]
            if cursor is None:
                break
    return requests


async def served(deck: Any, token: str, requests: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """Every card the warmed pages serve now, and the cache statuses seen."""
    ids: set[str] = set()
    statuses: set[str] = set()
    for req in requests:
        r = await deck(token, **req)
        assert r.status_code == 200, r.text
        ids |= {c["id"] for c in r.json()["data"]["candidates"]}
        statuses.add(r.headers["x-cache-status"])
    return ids, statuses


FILTER_SETS = [{}, {"max_distance_km": 60}, {"gender": "man"}, {"min_age": 25, "max_age": 35}]


@pytest.mark.parametrize("blocker", ["viewer", "candidate"])
async def test_a_blocked_user_never_appears_again_with_the_cache_warm(
    deck: Any, world: World, make_token: Any, rest: Database, blocker: str
) -> None:
    w = world
    him = await w.person("him", score=0.9)
    await w.person("other", score=0.5)
    viewer_token, his_token = make_token(w.me), make_token(him)
    mine = await warm(deck, viewer_token, FILTER_SETS)
    # his deck shows the viewer (she is a woman of 30 in his range)
    his = await warm(deck, his_token, [{}])
    assert him in (await served(deck, viewer_token, mine))[0] and w.me in (await served(deck, his_token, his))[0]

    a, b = (w.me, him) if blocker == "viewer" else (him, w.me)
    assert await as_user(rest, a, "insert into public.blocks (blocker_id, blocked_id) values (%s, %s)", a, b) == 1
    # both sides, every warmed page, at once
    assert him not in (await served(deck, viewer_token, mine))[0]
    assert w.me not in (await served(deck, his_token, his))[0]
    for _ in range(3):  # and again: nothing brings him back while the block stands
        assert him not in (await served(deck, viewer_token, mine))[0]

    # unblocking brings him back on the next read, on both sides
    assert await as_user(rest, a, "delete from public.blocks where blocker_id = %s and blocked_id = %s", a, b) == 1
    assert him in (await served(deck, viewer_token, mine))[0]
    assert w.me in (await served(deck, his_token, his))[0]


async def test_cached_pages_drop_whoever_became_ineligible(
    deck: Any, world: World, make_token: Any, rest: Database
) -> None:
    """Changes on the candidates' side, each made the way it is made in production (their
    own REST writes, the service's moderation), leave the warmed pages at once. No page is
    recomputed for it: the cached cards are re-checked (the status stays `hit`)."""
    w = world
    names = ["hidden", "deleted", "wants_men", "wants_older", "moved", "changed_gender", "stays"]
    people = {n: await w.person(n, score=0.1 * i) for i, n in enumerate(names)}
    token = make_token(w.me)
    requests = await warm(deck, token, FILTER_SETS, limit=50)  # one page each, everyone on it
    ids, _ = await served(deck, token, requests)
    assert set(people.values()) <= ids

    await service(w.dsn, "update public.profiles set hidden = true where id = %s", people["hidden"])
    await service(w.dsn, "update public.profiles set deleted_at = now() where id = %s", people["deleted"])
    await as_user(rest, people["wants_men"], "update public.profiles set interested_in = '{man}' where id = %s",
                  people["wants_men"])
    await as_user(rest, people["wants_older"], "update public.profiles set pref_min_age = 35 where id = %s",
                  people["wants_older"])
    await f.age_cell_moves(w.dsn, people["moved"])
    await as_user(rest, people["moved"], "update public.profiles set lat = lat + 1 where id = %s", people["moved"])
    await as_user(rest, people["changed_gender"], "update public.profiles set gender = 'woman' where id = %s",
                  people["changed_gender"])

    ids, statuses = await served(deck, token, requests)
    assert ids & set(people.values()) == {people["stays"]} and statuses == {"hit"}


async def test_the_callers_own_changes_recompute_their_deck(
    deck: Any, world: World, make_token: Any, rest: Database
) -> None:
    """The caller's side: their preferences, their published cell and blocks either way
    decide who may be in the deck at all, so a change to them is a new page, not a re-check."""
    w = world
    man = await w.person("man")
    nb = await w.person("nonbinary", gender="nonbinary")
    token = make_token(w.me)
    requests = await warm(deck, token, [{}])
    assert (await served(deck, token, requests))[0] == {man}
    await as_user(rest, w.me, "update public.profiles set interested_in = '{nonbinary}' where id = %s", w.me)
    ids, statuses = await served(deck, token, requests)
    assert ids == {nb} and "miss" in statuses
    # and a change that makes no difference to who qualifies keeps the page
    await as_user(rest, w.me, "update public.profiles set bio = 'new bio' where id = %s", w.me)
    assert (await served(deck, token, requests)) == ({nb}, {"hit"})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("block"), st.integers(0, 3), st.booleans()),
            st.tuples(st.just("unblock"), st.integers(0, 3), st.booleans()),
            st.tuples(st.just("hide"), st.integers(0, 3), st.booleans()),
            st.tuples(st.just("wants"), st.integers(0, 3), st.booleans()),
            st.tuples(st.just("read"), st.integers(0, len(FILTER_SETS) - 1), st.booleans()),
        ),
        min_size=4, max_size=20,
    )
)
async def test_no_served_deck_ever_holds_someone_ineligible(
    deck: Any, sandbox: dict[str, Any], make_token: Any, rest: Database, ops: list[tuple[str, int, bool]]
) -> None:
    """Any interleaving of blocks and unblocks (by either side), hides, preference changes
    and reads of warm pages: every card served is someone eligible at that moment."""
    me, people, dsn = sandbox["me"], sandbox["people"], sandbox["dsn"]
    token = make_token(me)
    await service(dsn, "delete from public.blocks where blocker_id = any(%s) or blocked_id = any(%s)",
                  [me, *people], [me, *people])
    await service(dsn, "update public.profiles set hidden = false, interested_in = '{woman}' where id = any(%s)", people)
    for op, i, flag in ops:
        him = people[i]
        if op == "block":
            a, b = (me, him) if flag else (him, me)
            await as_user(rest, a, "insert into public.blocks (blocker_id, blocked_id) values (%s, %s) on conflict do nothing", a, b)
        elif op == "unblock":
            a, b = (me, him) if flag else (him, me)
            await as_user(rest, a, "delete from public.blocks where blocker_id = %s and blocked_id = %s", a, b)
        elif op == "hide":
            await service(dsn, "update public.profiles set hidden = %s where id = %s", flag, him)
        elif op == "wants":
            await as_user(rest, him, "update public.profiles set interested_in = %s where id = %s",
                          ["woman"] if flag else ["man"], him)
        else:
            r = await deck(token, limit=2 if flag else 50, **FILTER_SETS[i])
            assert r.status_code == 200, r.text
            shown = [c["id"] for c in r.json()["data"]["candidates"]]
            assert not set(shown) & await ineligible(dsn, me, people), (ops, shown)


async def ineligible(dsn: str, me: str, people: list[str]) -> set[str]:
    """Who of `people` must not be in my deck right now, read as the superuser."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "select p.id::text from public.profiles p where p.id = any(%(people)s) and ("
            " p.hidden or p.deleted_at is not null or not ('woman' = any (p.interested_in))"
            " or exists (select 1 from public.blocks b where (b.blocker_id, b.blocked_id) in ((%(me)s, p.id), (p.id, %(me)s))))",
            {"people": people, "me": me},
        )
        return {r[0] for r in await cur.fetchall()}


@pytest.fixture(scope="module")
async def sandbox(database_url: str) -> dict[str, Any]:
    """One caller and four candidates, at their own spot (away from every World)."""
    lat, lon = 10.5, -150.5
    me = await f.create_user(database_url, gender="woman", birthdate=born(30), interested_in=["man"], lat=lat, lon=lon)
    people = [
        await f.create_user(database_url, gender="man", birthdate=born(31), interested_in=["woman"],
                            lat=lat + 0.01 * i, lon=lon, score=0.2 * i)
        for i in range(4)
    ]
    return {"me": me, "people": people, "dsn": database_url}
