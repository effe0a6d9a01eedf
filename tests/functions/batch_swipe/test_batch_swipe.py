"""batch-swipe over HTTP with real Postgres and Redis: per-item results, the like quota,
idempotency, exactly one match per mutual pair (also under concurrency), outbox events,
deck invalidation, one database round trip."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg

from functions.batch_swipe.handler import fn
from functions.batch_swipe.logic import deck_scope
from shared.context import Principal
from shared.db import Database
from tests import factories as f
from tests.functions.batch_swipe.conftest import results, scalar


async def test_each_item_gets_its_own_result(swipe: Any, database_url: str, make_token: Any) -> None:
    me = await f.create_user(database_url)
    ok, passed, again = [await f.create_user(database_url) for _ in range(3)]
    hidden = await f.create_user(database_url, hidden=True)
    gone = await f.create_user(database_url, deleted_at="2024-01-01T00:00:00Z")
    i_blocked, blocks_me = await f.create_user(database_url), await f.create_user(database_url)
    await f.block(database_url, me, i_blocked)
    await f.block(database_url, blocks_me, me)
    await f.add_swipe(database_url, me, again, "like")
    nobody = str(uuid.uuid4())
    r = await swipe(make_token(me), [
        (ok, "like"), (me, "like"), (hidden, "like"), (gone, "pass"), (nobody, "superlike"), (i_blocked, "like"),
        (blocks_me, "pass"), (ok, "pass"), (again, "like"), (passed, "pass"),
    ])
    assert results(r) == [
        "applied", "self", "invalid_target", "invalid_target", "invalid_target", "blocked",
        "blocked", "duplicate", "duplicate", "applied",
    ]
    data = r.json()["data"]
    assert data["summary"] == {"applied": 2, "duplicate": 2, "invalid_target": 3, "self": 1, "blocked": 2, "quota_exceeded": 0}
    assert [i["index"] for i in data["results"]] == list(range(10))
    assert data["likes"] == {"applied": 1, "limit": 100, "remaining": 99}
    rows = await _swipes_of(database_url, me)
    assert rows == sorted([(ok, "like"), (again, "like"), (passed, "pass")])


async def test_a_repeated_swipe_does_not_count_twice(swipe: Any, database_url: str, make_token: Any) -> None:
    me, other = await f.create_user(database_url), await f.create_user(database_url)
    token = make_token(me)
    first = await swipe(token, [(other, "like")])
    assert results(first) == ["applied"] and first.json()["data"]["likes"]["remaining"] == 99
    second = await swipe(token, [(other, "like")])
    assert results(second) == ["duplicate"]
    assert second.json()["data"]["likes"] == {"applied": 0, "limit": 100, "remaining": 99}  # refunded
    # a different action replaces the swipe (one row per pair); a superlike is a like
    third = await swipe(token, [(other, "superlike")])
    assert results(third) == ["applied"] and third.json()["data"]["likes"]["remaining"] == 98
    assert await _swipes_of(database_url, me) == [(other, "superlike")]


async def test_the_quota_counts_likes_and_applies_what_fits(swipe: Any, database_url: str, make_token: Any) -> None:
    me = await f.create_user(database_url)
    t = [await f.create_user(database_url) for _ in range(7)]
    await f.add_swipe(database_url, me, t[1], "like")
    token = make_token(me)
    # budget 3: a duplicate in the middle does not take a valid like's place
    r = await swipe(token, [(t[0], "like"), (t[1], "like"), (t[2], "superlike"), (t[3], "pass"), (t[4], "like"), (t[5], "like")],
                    likes_per_day_free=3)
    assert results(r) == ["applied", "duplicate", "applied", "applied", "applied", "quota_exceeded"]
    assert r.json()["data"]["likes"] == {"applied": 3, "limit": 3, "remaining": 0}
    # quota used up: likes are refused per item, passes still apply; no 429 for the batch
    r = await swipe(token, [(t[5], "like"), (t[6], "pass")])
    assert results(r) == ["quota_exceeded", "applied"]
    assert r.json()["data"]["likes"]["remaining"] == 0
    assert await scalar(database_url, "select count(*) from public.swipes where swiper_id = %s and action <> 'pass'", me) == 4


async def test_paid_users_get_their_own_limit(swipe: Any, database_url: str, make_token: Any) -> None:
    paid, free = await f.create_user(database_url, tier="paid"), await f.create_user(database_url)
    targets = [await f.create_user(database_url) for _ in range(4)]
    r = await swipe(make_token(paid, tier="paid"), [(t, "like") for t in targets], likes_per_day_free=2, likes_per_day_paid=3)
    assert results(r) == ["applied"] * 3 + ["quota_exceeded"]
    assert r.json()["data"]["likes"]["limit"] == 3
    r = await swipe(make_token(free), [(t, "like") for t in targets])
    assert results(r) == ["applied"] * 2 + ["quota_exceeded"] * 2


async def test_replaying_an_idempotency_key_returns_the_first_response(swipe: Any, database_url: str, make_token: Any) -> None:
    me, a, b = [await f.create_user(database_url) for _ in range(3)]
    await f.add_swipe(database_url, b, me, "like")
    token = make_token(me)
    key = f"batch-{uuid.uuid4()}"
    first = await swipe(token, [(a, "like"), (b, "like")], key=key)
    assert results(first) == ["applied", "applied"] and len(first.json()["data"]["matches"]) == 1
    await f.create_user(database_url)  # the world moves on; the replay changes nothing
    again = await swipe(token, [(a, "like"), (b, "like")], key=key)
    assert again.status_code == 200 and again.json()["data"] == first.json()["data"]
    assert again.json()["metadata"]["replayed"] is True
    assert await scalar(database_url, "select count(*) from public.matches where %s in (user_a, user_b)", me) == 1
    assert await scalar(database_url, "select count(*) from public.outbox where event_type = 'match.created' and %s = any(recipients)", me) == 1
    # the replay's grant went back: one more like still leaves 98
    c = await f.create_user(database_url)
    assert (await swipe(token, [(c, "like")])).json()["data"]["likes"]["remaining"] == 97
    # the same key for another batch is a conflict; the header works as the key too
    clash = await swipe(token, [(c, "pass")], key=key)
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    by_header = await swipe(token, [(a, "like"), (b, "like")], headers={"Idempotency-Key": key})
    assert by_header.json()["data"] == first.json()["data"]


async def test_the_scheduled_prune_drops_old_idempotency_records_only(
    swipe: Any, database_url: str, make_token: Any
) -> None:
    me, a, b = [await f.create_user(database_url) for _ in range(3)]
    token = make_token(me)
    old_key, new_key = f"old-{uuid.uuid4()}", f"new-{uuid.uuid4()}"
    await swipe(token, [(a, "like")], key=old_key, idempotency_retention_seconds=3600)
    await swipe(token, [(b, "pass")], key=new_key)
    await scalar(database_url, "update public.swipe_requests set created_at = now() - interval '2 hours' "
                               "where idempotency_key = %s returning 1", old_key)
    report = await fn._scheduled(fn.services)  # what the EventBridge rule runs (retention: 1 h here)
    assert report["ok"] is True and report["pruned"] >= 1
    keys = await scalar(database_url, "select array_agg(idempotency_key order by idempotency_key) from public.swipe_requests "
                                      "where user_id = %s", me)
    assert keys == [new_key]
    # a replay of the pruned key is answered from the swipes: a duplicate, nothing counted twice
    late = await swipe(token, [(a, "like")], key=old_key)
    assert results(late) == ["duplicate"] and late.json()["data"]["likes"]["remaining"] == 99


async def test_concurrent_requests_with_one_key_write_once(swipe: Any, database_url: str, make_token: Any) -> None:
    me = await f.create_user(database_url)
    targets = [await f.create_user(database_url) for _ in range(5)]
    token = make_token(me)
    key = str(uuid.uuid4())
    await swipe(token, [(targets[0], "pass")])  # configure the app before the race
    rs = await asyncio.gather(*(swipe(token, [(t, "like") for t in targets], key=key) for _ in range(8)))
    assert {r.status_code for r in rs} == {200}
    assert len({str(r.json()["data"]) for r in rs}) == 1
    assert sum(1 for r in rs if r.json()["metadata"].get("replayed")) == 7
    assert results(rs[0]) == ["applied"] * 5
    # 5 likes counted once, not 40
    follow = await swipe(token, [(str(uuid.uuid4()), "pass")])
    assert follow.status_code == 200
    nxt = await f.create_user(database_url)
    assert (await swipe(token, [(nxt, "like")])).json()["data"]["likes"]["remaining"] == 94


async def test_a_mutual_like_makes_one_match_and_one_event(swipe: Any, database_url: str, make_token: Any) -> None:
    a, b = await f.create_user(database_url), await f.create_user(database_url)
    first = await swipe(make_token(a), [(b, "like")])
    assert first.json()["data"]["matches"] == []
    second = await swipe(make_token(b), [(a, "superlike")])
    matches = second.json()["data"]["matches"]
    assert len(matches) == 1 and matches[0]["user_id"] == a
    low, high = sorted([a, b], key=uuid.UUID)
    row = await _one(database_url, "select id::text, user_a::text, user_b::text from public.matches where %s in (user_a, user_b)", a)
    assert row == (matches[0]["match_id"], low, high)
    event = await _one(database_url,
                       "select payload, recipients::text[], actor_id::text from public.outbox where event_type = 'match.created' and payload->>'match_id' = %s",
                       matches[0]["match_id"])
    assert event[0]["user_a"] == low and event[0]["user_b"] == high and sorted(event[1]) == sorted([a, b])
    assert event[2] == b  # enqueued in b's transaction
    # liking again, or upgrading the like, never makes a second match
    again = await swipe(make_token(a), [(b, "superlike")])
    assert results(again) == ["applied"] and again.json()["data"]["matches"] == []
    assert await scalar(database_url, "select count(*) from public.matches where %s in (user_a, user_b)", a) == 1


async def test_100_concurrent_mutual_pairs_make_exactly_100_matches(swipe: Any, database_url: str, make_token: Any) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        pairs = [(await f.create_user(conn), await f.create_user(conn)) for _ in range(100)]
    # configure the app first: a pool wide enough for real concurrency in the database, and
    # Redis deadlines that 200 requests sharing one event loop (and a busy machine) can meet
    await swipe(make_token(pairs[0][0]), [(str(uuid.uuid4()), "pass")], db_pool_max=20, redis_timeout_ms=5000)
    # 200 signatures: minted off the loop, which only serves the requests
    tokens = await asyncio.to_thread(lambda: {u: make_token(u) for pair in pairs for u in pair})
    calls = []
    for a, b in pairs:
        calls.append(swipe(tokens[a], [(b, "like")]))
        calls.append(swipe(tokens[b], [(a, "like")]))
    rs = await asyncio.gather(*calls)
    assert [r.status_code for r in rs] == [200] * 200
    ids = [p for pair in pairs for p in pair]
    assert await scalar(database_url, "select count(*) from public.matches where user_a = any(%s::uuid[])", ids) == 100
    reported = [m for r in rs for m in r.json()["data"]["matches"]]
    assert len(reported) == 100 and len({m["match_id"] for m in reported}) == 100
    assert await scalar(
        database_url, "select count(*) from public.outbox where event_type = 'match.created' and recipients && %s::uuid[]", ids
    ) == 100


async def test_interleaved_mutual_likes_in_open_transactions(database_url: str) -> None:
    """The race the advisory lock is for, made deterministic: a's batch has written its like
    but not committed when b's batch runs. b must wait for a's commit and then see the like
    (without the lock b would miss it, and a missed b's: no match at all)."""
    a, b = await f.create_user(database_url), await f.create_user(database_url)
    db = Database(database_url, max_size=2)
    try:
        async with db.transaction(principal=Principal(a, "authenticated"), service=True) as conn_a:
            cur = await conn_a.execute("select public.apply_swipes(%s::uuid[], %s::text[], 1)", ([b], ["like"]))
            assert (await cur.fetchone())[0]["response"]["matches"] == []  # type: ignore[index]

            async def b_likes_a() -> Any:
                async with db.transaction(principal=Principal(b, "authenticated"), service=True) as conn_b:
                    cur = await conn_b.execute("select public.apply_swipes(%s::uuid[], %s::text[], 1)", ([a], ["like"]))
                    return (await cur.fetchone())[0]  # type: ignore[index]

            task = asyncio.create_task(b_likes_a())
            await asyncio.sleep(0.3)
            assert not task.done()  # waiting on the pair's lock, held by a's transaction
        outcome = await asyncio.wait_for(task, 5)
    finally:
        await db.close()
    assert [m["user_id"] for m in outcome["response"]["matches"]] == [a]
    assert await scalar(database_url, "select count(*) from public.matches where %s in (user_a, user_b)", a) == 1


async def test_swipes_invalidate_the_decks_involved(swipe: Any, database_url: str, make_token: Any) -> None:
    a, b = await f.create_user(database_url), await f.create_user(database_url)
    await f.add_swipe(database_url, b, a, "like")
    await swipe(make_token(a), [(str(uuid.uuid4()), "pass")])
    kv = fn.services.kv
    cache = fn.services.response_cache
    before = [int(await kv.get(cache.version_key(deck_scope(u))) or 0) for u in (a, b)]
    r = await swipe(make_token(a), [(b, "like")])
    assert len(r.json()["data"]["matches"]) == 1
    after = [int(await kv.get(cache.version_key(deck_scope(u))) or 0) for u in (a, b)]
    assert [y - x for x, y in zip(before, after, strict=True)] == [1, 1]  # a: the swipe; b: the match


async def test_one_database_round_trip_per_batch(swipe: Any, database_url: str, make_token: Any) -> None:
    me = await f.create_user(database_url)
    targets = [await f.create_user(database_url) for _ in range(50)]
    token = make_token(me)
    await swipe(token, [(targets[0], "pass")])
    db = fn.services.db
    before = db.round_trips
    r = await swipe(token, [(t, "like" if i % 2 else "pass") for i, t in enumerate(targets)])
    assert db.round_trips - before == 1
    assert r.json()["data"]["summary"]["applied"] == 49 and r.json()["data"]["summary"]["duplicate"] == 1


async def test_bad_requests_are_400_envelopes(swipe: Any, database_url: str, make_token: Any) -> None:
    me = await f.create_user(database_url)
    token = make_token(me)
    other = await f.create_user(database_url)
    cases = [
        {"swipes": []},
        {"swipes": [{"target_id": other, "action": "like"}] * 51},
        {"swipes": [{"target_id": other, "action": "superpass"}]},
        {"swipes": [{"target_id": "not-a-uuid", "action": "like"}]},
        {"swipes": [{"target_id": other, "action": "like", "swiper_id": other}]},
        {"swipes": [{"target_id": other, "action": "like"}], "user_id": other},
        {"swipes": "all of them"},
        {"swipes": [{"target_id": other, "action": "like"}], "idempotency_key": ""},
    ]
    for body in cases:
        r = await swipe(token, body)
        assert r.status_code == 400, body
        assert r.json()["success"] is False and r.json()["error"]["code"] == "VALIDATION_ERROR"
    r = await swipe.state["client"].post("/functions/v1/batch-swipe", content=b"{not json",
                                         headers={"Authorization": f"Bearer {token}", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_JSON"
    assert await scalar(database_url, "select count(*) from public.swipes where swiper_id = %s", me) == 0


async def test_who_may_swipe(swipe: Any, database_url: str, make_token: Any) -> None:
    other = await f.create_user(database_url)
    r = await swipe(None, [(other, "like")])
    assert r.status_code == 401
    no_profile = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("insert into auth.users (id) values (%s)", (no_profile,))
    r = await swipe(make_token(no_profile), [(other, "like")])
    assert r.status_code == 422 and r.json()["error"]["code"] == "PROFILE_REQUIRED"
    r = await swipe(make_token(str(uuid.uuid4()), role="service_role"), [(other, "like")])
    assert r.status_code == 403


async def _swipes_of(dsn: str, swiper: str) -> list[tuple[str, str]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("select target_id::text, action from public.swipes where swiper_id = %s order by 1", (swiper,))
        return [(r[0], r[1]) for r in await cur.fetchall()]


async def _one(dsn: str, sql: str, *params: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchone()
