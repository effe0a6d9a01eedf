"""The edge cache: Cache-Control, ETag/304, the Redis response cache with versions,
single flight and stale-on-error, on both Redis backends."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from shared import errors
from shared.app import FunctionApp
from shared.cache import CachePolicy
from shared.context import RequestContext
from shared.ratelimit import RateRule
from shared.services import Services
from shared.settings import CoreSettings
from tests.conftest import ISSUER, KEY_PREFIX


class Backend:
    """What the handler reads: a counter of calls and a switch that makes it 'down'."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.value = 1
        self.delay = 0.0


def cached_app(kv: Any, jwks_url: str, backend: Backend, name: str | None = None) -> tuple[FunctionApp, Services]:
    fn = FunctionApp(name or "cached-" + uuid.uuid4().hex[:6], settings=CoreSettings)
    generous = RateRule(name="c-" + fn.name, limits={"free": 10_000, "paid": 10_000, "anonymous": 10_000})

    @fn.get("/mine", auth="required", rate=generous, cache=CachePolicy(ttl=60, version=lambda ctx: f"mine:{ctx.user_id}"))
    async def mine(ctx: RequestContext) -> Any:
        backend.calls += 1
        if backend.delay:
            await asyncio.sleep(backend.delay)
        if backend.down:
            raise errors.ServiceUnavailable("db down", code="DATABASE_UNAVAILABLE")
        ctx.metadata["user_tier"] = ctx.tier
        return {"user": ctx.user_id, "value": backend.value}

    @fn.get("/shared", auth="public", cache=CachePolicy(ttl=60, scope="public", s_maxage=120, stale_while_revalidate=30))
    async def shared(ctx: RequestContext) -> Any:
        backend.calls += 1
        return {"value": backend.value}

    @fn.get("/plain", auth="required", rate=generous)
    async def plain(ctx: RequestContext) -> Any:
        return {"ok": True}

    s = CoreSettings.load(env={}, jwt_issuer=ISSUER, supabase_jwks_url=jwks_url, key_prefix=KEY_PREFIX)
    services = Services(s, kv=kv)
    fn.configure(settings=s, services=services)
    return fn, services


@pytest.fixture
def setup(kv: Any, jwks_server: Any, make_token: Any) -> Any:
    backend = Backend()
    fn, services = cached_app(kv, jwks_server.url, backend)
    user = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {make_token(user, tier='paid')}"}
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=fn), base_url="http://t")
    return client, backend, services, user, headers


async def test_miss_then_hit_with_etag_and_304(setup: Any, kv: Any) -> None:
    c, backend, _, user, auth = setup
    async with c:
        r1 = await c.get("/mine", headers=auth)
        assert r1.status_code == 200 and backend.calls == 1
        assert r1.json()["metadata"]["cache_status"] == "miss"
        assert r1.headers["x-cache-status"] == "miss"
        etag = r1.headers["etag"]
        assert r1.headers["cache-control"] == "private, no-cache"
        assert "Authorization" in r1.headers["vary"]

        before = kv.round_trips
        r2 = await c.get("/mine", headers=auth)
        assert kv.round_trips - before == 1  # rate limit + cache lookup: one round trip
        assert backend.calls == 1
        body = r2.json()
        assert body["data"] == {"user": user, "value": 1}
        assert body["metadata"]["cache_status"] == "hit" and body["metadata"]["user_tier"] == "paid"
        assert body["metadata"]["rate_limit"]["remaining"] == 10_000 - 2
        assert r2.headers["etag"] == etag and "ratelimit-remaining" in r2.headers

        r3 = await c.get("/mine", headers={**auth, "If-None-Match": etag})
        assert r3.status_code == 304 and r3.content == b"" and backend.calls == 1
        assert r3.headers["etag"] == etag


async def test_version_bump_invalidates(setup: Any) -> None:
    c, backend, services, user, auth = setup
    async with c:
        await c.get("/mine", headers=auth)
        backend.value = 2
        assert (await c.get("/mine", headers=auth)).json()["data"]["value"] == 1
        await services.response_cache.bump(f"mine:{user}")
        r = await c.get("/mine", headers=auth)
        assert r.json()["data"]["value"] == 2 and r.json()["metadata"]["cache_status"] == "miss"
        assert backend.calls == 2


async def test_entries_are_per_principal(setup: Any, make_token: Any) -> None:
    c, backend, _, _, auth = setup
    other = {"Authorization": f"Bearer {make_token(str(uuid.uuid4()))}"}
    async with c:
        a = await c.get("/mine", headers=auth)
        b = await c.get("/mine", headers=other)
    assert a.json()["data"]["user"] != b.json()["data"]["user"]
    assert backend.calls == 2


async def test_single_flight_runs_the_handler_once_for_100_concurrent_misses(
    backend: str, make_kv: Any, jwks_server: Any, make_token: Any
) -> None:
    # a generous deadline: the REST bridge shares this process with 100 concurrent requests,
    # and this test is about single flight, not deadlines (a timeout would fail open)
    kv = make_kv(backend, timeout=5.0)
    counter = Backend()
    fn, _ = cached_app(kv, jwks_server.url, counter)
    auth = {"Authorization": f"Bearer {make_token()}"}
    c = httpx.AsyncClient(transport=httpx.ASGITransport(app=fn), base_url="http://t")
    backend = counter
    backend.delay = 0.2
    async with c:
        results = await asyncio.gather(*(c.get("/mine", headers=auth) for _ in range(100)))
    assert {r.status_code for r in results} == {200}
    assert backend.calls == 1
    assert {r.json()["data"]["value"] for r in results} == {1}


async def test_single_flight_across_processes_waits_for_the_lock_holder(kv: Any, jwks_server: Any, make_token: Any) -> None:
    """Two app instances (as two processes would be) share Redis: the second waits."""
    backend = Backend()
    backend.delay = 0.3
    name = "cached-" + uuid.uuid4().hex[:6]  # same route name, so the same cache key
    fn1, _ = cached_app(kv, jwks_server.url, backend, name)
    fn2, _ = cached_app(kv, jwks_server.url, backend, name)
    auth = {"Authorization": f"Bearer {make_token(str(uuid.uuid4()))}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fn1), base_url="http://t") as c1, httpx.AsyncClient(
        transport=httpx.ASGITransport(app=fn2), base_url="http://t"
    ) as c2:
        first = asyncio.create_task(c1.get(f"/functions/v1/{fn1.name}/mine", headers=auth))
        await asyncio.sleep(0.05)
        second = await c2.get(f"/functions/v1/{fn1.name}/mine", headers=auth)
        await first
    assert backend.calls == 1
    # whichever reached Redis first computed; the other waited for its result (on a slow
    # machine the second request can win the lock)
    statuses = sorted(r.json()["metadata"]["cache_status"] for r in (first.result(), second))
    assert statuses == ["hit", "miss"]


async def test_stale_on_error_then_503_without_an_entry(setup: Any, make_token: Any) -> None:
    c, backend, services, user, auth = setup
    async with c:
        await c.get("/mine", headers=auth)
        await services.response_cache.bump(f"mine:{user}")  # the entry is now stale
        backend.down = True
        r = await c.get("/mine", headers=auth)
        assert r.status_code == 200
        assert r.headers["x-cache-status"] == "stale" and r.json()["metadata"]["cache_status"] == "stale"
        assert r.json()["data"]["value"] == 1
        fresh_user = {"Authorization": f"Bearer {make_token(str(uuid.uuid4()))}"}
        r = await c.get("/mine", headers=fresh_user)
        assert r.status_code == 503 and r.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
        assert r.headers["cache-control"] == "private, no-store"


async def test_requests_sharing_a_computation_that_served_stale_say_stale(setup: Any) -> None:
    """Concurrent requests wait for the one computing; when that one falls back to the stale
    entry (the database is down), they all report `stale`, never `hit`."""
    c, backend, services, user, auth = setup
    async with c:
        await c.get("/mine", headers=auth)
        await services.response_cache.bump(f"mine:{user}")
        backend.down, backend.delay = True, 0.2
        rs = await asyncio.gather(*(c.get("/mine", headers=auth) for _ in range(5)))
        assert [r.status_code for r in rs] == [200] * 5
        assert backend.calls == 2  # one computation after the first: the others shared it
        assert {r.json()["metadata"]["cache_status"] for r in rs} == {"stale"}
        assert {r.headers["x-cache-status"] for r in rs} == {"stale"}


def lock_holder_answered_last(services: Services) -> None:
    """Make the request that wins the single-flight lock learn it 50 ms after the others
    learn they lost it (replies over several connections can arrive in any order)."""
    limiter = services.rate_limiter
    check = limiter.check

    async def delayed(*args: Any, **kwargs: Any) -> Any:
        decision = await check(*args, **kwargs)
        if decision.lock:
            await asyncio.sleep(0.05)
        return decision

    limiter.check = delayed  # type: ignore[method-assign]


async def test_a_waiter_answered_before_the_lock_holder_shares_its_computation(setup: Any) -> None:
    """A request told "the lock is taken" may run before the lock holder has started
    computing: it must still share that computation (here a stale fallback), not poll Redis
    for an entry that is never stored and then run the handler itself."""
    c, backend, services, user, auth = setup
    async with c:
        await c.get("/mine", headers=auth)
        await services.response_cache.bump(f"mine:{user}")
        backend.down, backend.delay = True, 0.2
        lock_holder_answered_last(services)
        rs = await asyncio.gather(*(c.get("/mine", headers=auth) for _ in range(5)))
        assert [r.status_code for r in rs] == [200] * 5
        assert backend.calls == 2  # the first request's, then the lock holder's only
        assert {r.headers["x-cache-status"] for r in rs} == {"stale"}


async def test_waiters_stop_waiting_when_the_lock_holder_gives_up_without_an_entry(setup: Any) -> None:
    """The holder failed at once (database down, stale served, nothing stored) and released
    the lock before the others looked for its result: they compute it themselves as soon as
    they see the lock gone, instead of polling for the whole wait budget (lock_ms / 3)."""
    c, backend, services, user, auth = setup
    async with c:
        await c.get("/mine", headers=auth)
        await services.response_cache.bump(f"mine:{user}")
        backend.down = True
        lock_holder_answered_last(services)
        started = asyncio.get_running_loop().time()
        rs = await asyncio.gather(*(c.get("/mine", headers=auth) for _ in range(5)))
        elapsed = asyncio.get_running_loop().time() - started
        assert [r.status_code for r in rs] == [200] * 5
        assert {r.headers["x-cache-status"] for r in rs} == {"stale"}
        assert backend.calls == 6  # each fell back to the stale entry itself
        assert elapsed < 1.0, f"the waiters polled for {elapsed:.2f} s; the budget is 1.67 s"


async def test_public_scope_and_default_no_store(setup: Any) -> None:
    c, backend, _, _, auth = setup
    async with c:
        r = await c.get("/shared")
        assert r.headers["cache-control"] == "public, max-age=0, s-maxage=120, stale-while-revalidate=30"
        assert "Authorization" not in r.headers.get("vary", "")
        r2 = await c.get("/shared", headers=auth)
        assert r2.json()["metadata"]["cache_status"] == "hit" and backend.calls == 1
        r = await c.get("/plain", headers=auth)
        assert r.headers["cache-control"] == "private, no-store" and "etag" not in r.headers


async def test_redis_down_bypasses_the_cache(backend: str, make_kv: Any, closed_port: int, jwks_server: Any, make_token: Any) -> None:
    kv = make_kv(backend, f"127.0.0.1:{closed_port}", timeout=0.05)
    b = Backend()
    fn, _ = cached_app(kv, jwks_server.url, b)
    auth = {"Authorization": f"Bearer {make_token()}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fn), base_url="http://t") as c:
        r = await c.get("/mine", headers=auth)
        shared = await c.get("/shared")
    assert r.status_code == 200 and r.headers["x-cache-status"] == "bypass"
    assert shared.status_code == 200 and shared.headers["x-cache-status"] == "bypass"
