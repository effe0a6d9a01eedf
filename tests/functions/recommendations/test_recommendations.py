"""recommendations over HTTP with real Postgres and Redis: who is (not) in the deck, what a
card shows, ranking on every path, cursor pagination while swiping, the cache and its
invalidation by batch-swipe, bad parameters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from functions.batch_swipe.handler import fn as swipe_fn
from functions.recommendations.cursor import Cursor, filters_digest
from functions.recommendations.handler import fn
from tests import factories as f
from tests.functions.recommendations.conftest import World, all_pages, born, unit


async def has_pgvector(dsn: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("select public.has_pgvector()")
        return bool((await cur.fetchone())[0])  # type: ignore[index]


def cards(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    return r.json()["data"]["candidates"]  # type: ignore[no-any-return]


async def test_who_is_left_out(deck: Any, world: World, make_token: Any) -> None:
    w, dsn = world, world.dsn
    for name in ("good1", "good2"):
        await w.person(name)
    liked, passed = await w.person("liked"), await w.person("passed")
    await f.add_swipe(dsn, w.me, liked, "like")
    await f.add_swipe(dsn, w.me, passed, "pass")
    i_blocked, blocks_me, matched = await w.person("i_blocked"), await w.person("blocks_me"), await w.person("matched")
    await f.block(dsn, w.me, i_blocked)
    await f.block(dsn, blocks_me, w.me)
    await f.add_match(dsn, w.me, matched)
    liked_me = await w.person("liked_me")  # their like does not hide them
    await f.add_swipe(dsn, liked_me, w.me, "like")
    await w.person("hidden", hidden=True)
    await w.person("deleted", deleted_at=datetime.now(UTC))
    await w.person("wants_men", interested_in=["man"])  # the caller is a woman
    await w.person("wants_older", pref_min_age=35)  # the caller is 30
    await w.person("too_old", birthdate=born(45))  # the caller wants 25 to 40
    await w.person("woman", gender="woman", interested_in=["woman"])
    await w.person("far", km=80)
    await w.person("no_location", lat=None, lon=None)
    await w.person("anyone", interested_in=[])  # empty interested_in: open to everyone
    token = make_token(w.me)
    got = sorted(w.names(cards(await deck(token, limit=50))))
    assert got == ["anyone", "good1", "good2", "liked_me"]
    # explicit filters replace the caller's own preferences
    assert w.names(cards(await deck(token, gender="woman"))) == ["woman"]
    assert sorted(w.names(cards(await deck(token, min_age=41, max_age=50)))) == ["too_old"]
    assert sorted(w.names(cards(await deck(token, max_distance_km=100)))) == ["anyone", "far", "good1", "good2", "liked_me"]


async def test_cards_show_public_fields_only(deck: Any, world: World, make_token: Any) -> None:
    him = await world.person("him", km=12.4, birthdate=born(33))
    (card,) = cards(await deck(make_token(world.me)))
    # the distance between the two 3 km cells, rounded up to its step (5, 10, 15, 20, 30 ...)
    assert card == {
        "id": him, "display_name": "him", "age": 33, "distance_km": 15, "bio": "I am him",
        "photos": [{"bucket": "avatars", "key": "avatars/him.jpg"}],
    }
    # not even a very close person's distance below the first step
    await world.person("next_door", km=0.05)
    await fn.services.response_cache.bump(f"deck:{world.me}")
    near = [c for c in cards(await deck(make_token(world.me))) if c["display_name"] == "next_door"]
    assert near[0]["distance_km"] == 5


async def test_similarity_score_and_recency(deck: Any, world: World, make_token: Any) -> None:
    w = world
    now = datetime.now(UTC)
    for angle in (80, 10, 50, 30):
        await w.person(f"angle{angle}", embedding=unit(angle))
    await w.person("no_embedding_high_score", score=0.9)  # similarity falls back to the score: 0.81
    await w.person("no_embedding_low_score", score=0.1)
    await w.person("angle40_active", embedding=unit(40), last_active_at=now - timedelta(hours=1))
    token = make_token(w.me)
    # 0.6 * similarity + 0.3 * score + 0.1 * recency: 0.81, 0.741, 0.7095 (0.6096 + 0.0999), 0.67, ...
    got = w.names(cards(await deck(token)))
    assert got == [
        "no_embedding_high_score", "angle10", "angle40_active", "angle30", "angle50", "angle80", "no_embedding_low_score",
    ]
    # the caller without an embedding: score and recency only
    async with await psycopg.AsyncConnection.connect(w.dsn, autocommit=True) as conn:
        await conn.execute("delete from public.profile_embeddings where user_id = %s", (w.me,))
    await fn.services.response_cache.bump(f"deck:{w.me}")  # what a profile write path would do
    r = await deck(token)
    assert r.json()["metadata"]["ranking"] == "score"
    assert w.names(cards(r))[:2] == ["no_embedding_high_score", "angle40_active"]


@pytest.mark.parametrize("forced", ["exact", "vector_exact", "hnsw"])
async def test_every_path_ranks_the_fixture_the_same(deck: Any, world: World, make_token: Any, forced: str) -> None:
    """The exact path (plain SQL, what a database without pgvector uses), pgvector's exact
    operator and the HNSW index give the same order (on a pgvector database; without it
    every strategy falls back to the plain SQL one). Everyone in the fixture has an
    embedding: with hnsw, people without one come after the pool (tier 1)."""
    w = world
    for i, angle in enumerate((5, 85, 40, 20, 70, 60, 12, 35)):
        await w.person(f"p{i}", embedding=unit(angle), score=0.3 + 0.05 * i,
                       last_active_at=datetime.now(UTC) - timedelta(days=i))
    token = make_token(w.me)
    deck.configure(deck_strategy="exact")
    reference = await all_pages(deck, token, limit=3)
    assert len([c for page in reference for c in page]) == 8
    deck.configure(deck_strategy=forced, deck_hnsw_pool=1000)
    await fn.services.response_cache.bump(f"deck:{w.me}")  # the strategy is not part of the cache key
    r = await deck(token, limit=3)
    expected = forced if await has_pgvector(w.dsn) else "exact"
    assert r.json()["metadata"]["ranking"] == expected
    pages = await all_pages(deck, token, limit=3)
    flat = [w.names(p) for p in pages]
    assert [n for p in flat for n in p] == [n for p in reference for n in w.names(p)]
    if forced != "hnsw":
        assert flat == [w.names(p) for p in reference]


@pytest.mark.parametrize("strategy", ["auto", "exact", "hnsw"])
async def test_pages_have_no_duplicates_or_gaps_while_swiping(
    deck: Any, world: World, make_token: Any, client_for: Any, strategy: str
) -> None:
    w = world
    for i in range(14):
        await w.person(f"c{i:02d}", embedding=unit(7 * i) if i % 4 else None, score=(i * 37 % 14) / 14)
    token = make_token(w.me)
    # a tiny HNSW pool (40 nearest of every embedding in this run's database): the deck
    # runs over tier 0 into tier 1
    deck.configure(deck_strategy=strategy, deck_hnsw_pool=40)
    full = [n for page in await all_pages(deck, token, limit=50) for n in w.names(page)]
    assert sorted(full) == [f"c{i:02d}" for i in range(14)]

    swiper = client_for(swipe_fn)
    first = await deck(token, limit=5)
    p1, cursor = cards(first), first.json()["data"]["next_cursor"]
    assert w.names(p1) == full[: len(p1)] and cursor
    # swipe two people of page 1 and one further down
    later = full[8] if full[8] not in w.names(p1) else full[9]
    body = {"swipes": [{"target_id": p1[0]["id"], "action": "like"}, {"target_id": p1[1]["id"], "action": "pass"},
                       {"target_id": w.people[later], "action": "pass"}]}
    r = await swiper.post("/functions/v1/batch-swipe", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["data"]["summary"]["applied"] == 3
    rest: list[str] = []
    while cursor:
        r = await deck(token, limit=5, cursor=cursor)
        rest += w.names(cards(r))
        cursor = r.json()["data"]["next_cursor"]
    seen = w.names(p1) + rest
    assert len(seen) == len(set(seen)), "a card came twice"
    assert sorted(seen) == sorted(set(full) - {later}), "a card went missing"
    assert seen == [n for n in full if n != later]


async def test_hnsw_tiers_page_through_everything(deck: Any, world: World, make_token: Any) -> None:
    w = world
    for i in range(9):
        await w.person(f"h{i}", embedding=unit(11 * i))
    token = make_token(w.me)
    deck.configure(deck_strategy="hnsw", deck_hnsw_pool=40)
    pages = await all_pages(deck, token, limit=2)
    flat = [n for p in pages for n in w.names(p)]
    assert sorted(flat) == sorted(w.people) and len(flat) == len(set(flat))


async def test_cached_for_the_user_until_they_swipe(deck: Any, world: World, make_token: Any, client_for: Any) -> None:
    """A page's ranking is cached per user, filters and cursor; serving it costs one database
    round trip that re-checks the cached cards (0017b), not a new ranking."""
    w = world
    a, b = await w.person("a", score=0.9), await w.person("b", score=0.1)
    token = make_token(w.me)
    deck.configure()
    first = await deck(token)
    assert first.headers["x-cache-status"] == "miss" and w.names(cards(first)) == ["a", "b"]
    services = fn.services
    db0 = services.db.round_trips
    hit = await deck(token)
    assert hit.headers["x-cache-status"] == "hit" and services.db.round_trips == db0 + 1
    assert hit.json()["metadata"]["cache_status"] == "hit"
    assert hit.json()["data"] == first.json()["data"]
    # another filter set is another entry
    other = await deck(token, max_distance_km=60)
    assert other.headers["x-cache-status"] == "miss" and services.db.round_trips == db0 + 2
    # a swipe through batch-swipe invalidates every cached page of the caller
    swiper = client_for(swipe_fn)
    r = await swiper.post("/functions/v1/batch-swipe", json={"swipes": [{"target_id": a, "action": "pass"}]},
                          headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    after = await deck(token)
    assert after.headers["x-cache-status"] == "miss" and w.names(cards(after)) == ["b"]
    assert w.names(cards(await deck(token, max_distance_km=60))) == ["b"]
    # someone else's swipe does not touch this user's cache
    stranger = await f.create_user(w.dsn)
    await swiper.post("/functions/v1/batch-swipe", json={"swipes": [{"target_id": b, "action": "like"}]},
                      headers={"Authorization": f"Bearer {make_token(stranger)}"})
    assert (await deck(token)).headers["x-cache-status"] == "hit"


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": 0}, "limit"), ({"limit": 51}, "limit"), ({"limit": "ten"}, "limit"),
    ({"min_age": 10}, "min_age"), ({"min_age": 30, "max_age": 25}, "max_age"), ({"gender": "robot"}, "gender"),
    ({"max_distance_km": -5}, "max_distance_km"), ({"max_distance_km": "far"}, "max_distance_km"),
    ({"user_id": "00000000-0000-4000-8000-000000000001"}, "user_id"), ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
])
async def test_bad_parameters_are_400s_naming_the_parameter(
    deck: Any, world: World, make_token: Any, params: dict[str, Any], field: str
) -> None:
    r = await deck(make_token(world.me), **params)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] in ("VALIDATION_ERROR", "INVALID_CURSOR") and field in err["message"]


async def test_a_cursor_belongs_to_its_filters(deck: Any, world: World, make_token: Any) -> None:
    for i in range(3):
        await world.person(f"x{i}")
    token = make_token(world.me)
    cursor = (await deck(token, limit=1)).json()["data"]["next_cursor"]
    assert (await deck(token, limit=2, cursor=cursor)).status_code == 200  # the page size may change
    r = await deck(token, limit=1, cursor=cursor, max_distance_km=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_CURSOR"
    forged = Cursor("nonsense", 0, None, None, datetime.now(UTC), filters_digest([None, None, None, 50.0])).encode()
    assert (await deck(token, cursor=forged)).status_code == 400


async def test_who_can_have_a_deck(deck: Any, world: World, make_token: Any, database_url: str) -> None:
    nowhere = await f.create_user(database_url, lat=None, lon=None)
    r = await deck(make_token(nowhere))
    assert r.status_code == 422 and r.json()["error"]["code"] == "LOCATION_REQUIRED"
    assert (await deck(make_token(nowhere), max_distance_km=None)).status_code == 200
    ghost = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("insert into auth.users (id) values (%s)", (ghost,))
    r = await deck(make_token(ghost))
    assert r.status_code == 422 and r.json()["error"]["code"] == "PROFILE_REQUIRED"
    assert (await deck(make_token(str(uuid.uuid4()), role="service_role"))).status_code == 403
    assert (await fn_client_without_token(deck)).status_code == 401


async def fn_client_without_token(deck: Any) -> httpx.Response:
    client: httpx.AsyncClient = deck.configure()
    return await client.get("/functions/v1/recommendations")


async def test_the_deck_function_is_no_rest_endpoint(database_url: str, world: World) -> None:
    """public.deck is executable by the service role only: the rate-limited recommendations
    route calls it for the verified caller. A user (or anon) calling it directly, as the
    REST API would, is refused; and it answers for auth.uid() only, never without one."""
    for role, claims in (("authenticated", f'{{"sub": "{world.me}", "role": "authenticated"}}'), ("anon", "{}")):
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            await conn.execute("select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                               (role, claims))
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function deck"):
                await conn.execute("select * from public.deck(5)")
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("select set_config('role', 'service_role', true)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no user"):
            await conn.execute("select * from public.deck(5)")


async def test_the_candidate_table_follows_profile_changes(deck: Any, world: World, make_token: Any) -> None:
    """deck_profiles is kept in step by triggers: hiding, deleting, moving, re-embedding and
    bulk loads (session_replication_role = replica, as `edgefn seed` sets) all show."""
    w = world
    token = make_token(w.me)
    a = await w.person("a", embedding=unit(80))
    b = await w.person("b", embedding=unit(10))
    assert w.names(cards(await deck(token))) == ["b", "a"]

    async def change(sql: str, *params: Any) -> list[str]:
        async with await psycopg.AsyncConnection.connect(w.dsn, autocommit=True) as conn:
            await conn.execute(sql, params)
        await fn.services.response_cache.bump(f"deck:{w.me}")
        return w.names(cards(await deck(token)))

    assert await change("update public.profile_embeddings set embedding = %s::real[] where user_id = %s", unit(0), a) == ["a", "b"]
    assert await change("update public.profiles set hidden = true where id = %s", a) == ["b"]
    assert await change("update public.profiles set hidden = false where id = %s", a) == ["a", "b"]
    # 111 km away: the published cell follows at most once per 15 minutes (0017b) ...
    assert await change("update public.profiles set lat = lat + 1 where id = %s", a) == ["a", "b"]
    await f.age_cell_moves(w.dsn, a)
    # ... so it moves with the first location write after that
    assert await change("update public.profiles set lat = lat where id = %s", a) == ["b"]
    assert await change("delete from public.profile_embeddings where user_id = %s", b) == ["b"]
    assert await change("update public.profiles set deleted_at = now() where id = %s", b) == []
    async with await psycopg.AsyncConnection.connect(w.dsn) as conn:
        await conn.execute("set local session_replication_role = replica")
        await f.create_user(conn, gender="man", birthdate=born(30), interested_in=["woman"], lat=w.lat, lon=w.lon,
                            display_name="bulk", embedding=unit(5))
        await conn.commit()
    await fn.services.response_cache.bump(f"deck:{w.me}")
    assert [c["display_name"] for c in cards(await deck(token))] == ["bulk"]
