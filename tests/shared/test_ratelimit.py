"""Tiered rate limiting against a real Redis, on both backends (TCP and Upstash REST)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from shared.app import FunctionApp
from shared.context import RequestContext
from shared.ratelimit import RateLimiter, RateRule, tier_key
from shared.services import Services
from shared.settings import CoreSettings
from tests.conftest import ISSUER, KEY_PREFIX


def rule(**limits: int) -> RateRule:
    return RateRule(name="t" + uuid.uuid4().hex[:8], limits={"anonymous": 2, "free": 5, "paid": 8, "admin": 20, **limits})


async def test_sliding_window_admits_the_limit_then_refuses(kv: Any) -> None:
    limiter = RateLimiter(kv)
    r = rule()
    decisions = [await limiter.check(r, "u1", user_id="u1") for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[5]
    assert refused.limit == 5 and refused.tier == "free"
    assert 1 <= refused.retry_after <= 60 and 1 <= refused.reset_seconds <= 60
    h = refused.headers()
    assert h["RateLimit-Limit"] == "5" and h["RateLimit-Remaining"] == "0" and "Retry-After" in h
    assert int(h["X-RateLimit-Reset"]) >= int(time.time())


async def test_tier_in_redis_beats_the_token_hint(kv: Any) -> None:
    limiter = RateLimiter(kv)
    user = str(uuid.uuid4())
    r = rule()
    d = await limiter.check(r, user, user_id=user, tier_hint="free")
    assert (d.tier, d.limit, d.tier_from_redis) == ("free", 5, False)
    await limiter.set_tier(user, "paid")
    d = await limiter.check(r, user, user_id=user, tier_hint="free")
    assert (d.tier, d.limit, d.tier_from_redis) == ("paid", 8, True)
    # an unknown tier string never grants more than free
    await kv.set(tier_key(kv, user), "platinum")
    d = await limiter.check(r, user, user_id=user, tier_hint="admin")
    assert (d.tier, d.limit) == ("free", 5)


async def test_cost_and_partial_grants(kv: Any) -> None:
    limiter = RateLimiter(kv)
    r = RateRule(name="likes-" + uuid.uuid4().hex[:6], limits={"free": 100}, window_seconds=86400)
    grants = [(await limiter.check(r, "u", user_id="u", cost=30, partial=True)).granted for _ in range(4)]
    assert grants == [30, 30, 30, 10]
    d = await limiter.check(r, "u", user_id="u", cost=5, partial=True)
    assert (d.granted, d.allowed, d.remaining) == (0, False, 0)
    # all-or-nothing when not partial; a cost above the limit can never fit
    r2 = rule()
    d = await limiter.check(r2, "v", user_id="v", cost=6)
    assert (d.allowed, d.granted, d.retry_after) == (False, 0, -1)
    assert "Retry-After" not in d.headers()


async def test_one_round_trip_per_decision(kv: Any) -> None:
    limiter = RateLimiter(kv)
    r = rule(free=1000)
    await limiter.check(r, "w", user_id="w")  # loads the script if needed
    before = kv.round_trips
    for _ in range(10):
        await limiter.check(r, "w", user_id="w")
    assert kv.round_trips - before == 10


async def test_windows_are_per_identity(kv: Any) -> None:
    limiter = RateLimiter(kv)
    r = rule()
    for _ in range(5):
        assert (await limiter.check(r, "a", user_id="a")).allowed
    assert not (await limiter.check(r, "a", user_id="a")).allowed
    assert (await limiter.check(r, "b", user_id="b")).allowed


# -- through the pipeline ------------------------------------------------------------------


def limited_app(kv: Any, jwks_url: str, **settings: Any) -> tuple[FunctionApp, Services]:
    fn = FunctionApp("limited", settings=CoreSettings)
    r = rule()

    @fn.get("/open", auth="optional", rate=r, redis_failure="open")
    async def open_(ctx: RequestContext) -> Any:
        return {"tier": ctx.tier}

    @fn.get("/closed", auth="required", rate=r, redis_failure="closed")
    async def closed(ctx: RequestContext) -> Any:
        return {"ok": True}

    @fn.get("/default", auth="required")
    async def default(ctx: RequestContext) -> Any:
        return {"ok": True}

    s = CoreSettings.load(env={}, jwt_issuer=ISSUER, supabase_jwks_url=jwks_url, key_prefix=KEY_PREFIX, **settings)
    services = Services(s, kv=kv)
    fn.configure(settings=s, services=services)
    return fn, services


def client(fn: FunctionApp, peer: str = "203.0.113.7") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=fn, client=(peer, 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def test_429_has_envelope_headers_and_then_costs_no_redis_call(kv: Any, jwks_server: Any, make_token: Any) -> None:
    fn, _ = limited_app(kv, jwks_server.url)
    auth = {"Authorization": f"Bearer {make_token()}"}
    async with client(fn) as c:
        statuses = [(await c.get("/closed", headers=auth)).status_code for _ in range(5)]
        assert statuses == [200] * 5
        r = await c.get("/closed", headers=auth)
        assert r.status_code == 429
        body = r.json()
        assert body["success"] is False and body["error"]["code"] == "RATE_LIMITED"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["ratelimit-remaining"] == "0" and r.headers["x-ratelimit-limit"] == "5"
        before = kv.round_trips
        for _ in range(20):
            assert (await c.get("/closed", headers=auth)).status_code == 429
        assert kv.round_trips == before  # remembered in-process until the reset


async def test_default_tier_limits_apply_to_authenticated_routes(kv: Any, jwks_server: Any, make_token: Any) -> None:
    fn, _ = limited_app(kv, jwks_server.url, rate_limit_paid=3)
    auth = {"Authorization": f"Bearer {make_token(tier='paid')}"}
    async with client(fn) as c:
        r = await c.get("/default", headers=auth)
        assert r.status_code == 200 and r.headers["ratelimit-limit"] == "3"
        assert r.json()["metadata"]["rate_limit"]["remaining"] == 2


async def test_anonymous_identity_ignores_untrusted_forwarding_headers(kv: Any, jwks_server: Any) -> None:
    fn, _ = limited_app(kv, jwks_server.url)
    async with client(fn) as c:
        codes = [(await c.get("/open", headers={"x-forwarded-for": f"10.0.0.{i}"})).status_code for i in range(4)]
    assert codes == [200, 200, 429, 429]  # anonymous limit 2, spoofed addresses change nothing


async def test_trusted_proxy_header_identifies_anonymous_clients(kv: Any, jwks_server: Any) -> None:
    secret = "s" * 32  # the CDN's origin header: without it the address header is not believed
    fn, _ = limited_app(kv, jwks_server.url, trusted_proxy_header="cloudfront-viewer-address", origin_verify_secrets=secret)
    async with client(fn) as c:
        via = {"x-origin-verify": secret}
        a = [(await c.get("/open", headers={**via, "cloudfront-viewer-address": "198.51.100.1:4000"})).status_code for _ in range(3)]
        b = await c.get("/open", headers={**via, "cloudfront-viewer-address": "[2001:db8::5]:4000"})
    assert a == [200, 200, 429] and b.status_code == 200


@pytest.mark.parametrize("route,expected", [("/open", 200), ("/closed", 503)])
@pytest.mark.parametrize("outage", ["closed port", "silent server"])
async def test_redis_down_follows_the_route_policy(
    backend: str, make_kv: Any, closed_port: int, silent_server: Any, jwks_server: Any, make_token: Any,
    route: str, expected: int, outage: str,
) -> None:
    port = closed_port if outage == "closed port" else silent_server.port
    kv = make_kv(backend, f"127.0.0.1:{port}", timeout=0.05)
    fn, _ = limited_app(kv, jwks_server.url)
    auth = {"Authorization": f"Bearer {make_token()}"}
    async with client(fn) as c:
        started = time.perf_counter()
        r = await c.get(route, headers=auth)
        elapsed = time.perf_counter() - started
    assert r.status_code == expected
    assert elapsed < 1.0  # never a hang
    if expected == 503:
        assert r.json()["error"]["code"] == "RATE_LIMITER_UNAVAILABLE"
    else:
        assert "ratelimit-limit" not in r.headers


async def test_tier_missing_everywhere_is_stored_from_the_token(kv: Any, jwks_server: Any, make_token: Any) -> None:
    fn, services = limited_app(kv, jwks_server.url)
    user = str(uuid.uuid4())
    async with client(fn) as c:
        r = await c.get("/default", headers={"Authorization": f"Bearer {make_token(user, tier='paid')}"})
        assert r.status_code == 200
    for _ in range(50):
        if await kv.get(tier_key(kv, user)) == "paid":
            break
        await asyncio.sleep(0.02)
    assert await kv.get(tier_key(kv, user)) == "paid"


@pytest.mark.parametrize("claimed", ["paid 1000000 1000000 1000000 1000000", "admin\t1", "anonymous", "premium", "", 7, ["paid"]])
async def test_a_token_tier_outside_the_known_tiers_counts_as_none(
    kv: Any, jwks_server: Any, make_token: Any, claimed: Any
) -> None:
    """A tier string with spaces used to shift the script's packed arguments and change the
    limit; an unknown tier is now as if the token named none (free, with no Redis record)."""
    fn, _ = limited_app(kv, jwks_server.url, rate_limit_free=4, rate_limit_paid=50, rate_limit_admin=60)
    token = make_token(str(uuid.uuid4()), extra={"app_metadata": {"tier": claimed}})
    async with client(fn) as c:
        r = await c.get("/default", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.headers["ratelimit-limit"] == "4"


async def test_the_limiter_refuses_unknown_tiers(kv: Any) -> None:
    limiter = RateLimiter(kv)
    for bad in ("paid 1 1", "premium", ""):
        with pytest.raises(ValueError, match="unknown tier"):
            await limiter.check(rule(), "t", user_id="t", tier_hint=bad)
        with pytest.raises(ValueError, match="unknown tier"):
            await limiter.set_tier("t", bad)
    with pytest.raises(ValueError):
        await limiter.set_tier("t", "anonymous")  # a signed-in user is never anonymous
