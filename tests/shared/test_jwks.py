"""The JWKS cache against an endpoint that answers, hangs or fails, over real HTTP: one fetch
at a time; stale keys served at once while a background refresh runs, up to the ceiling
(JWKS_MAX_STALE_SECONDS); past it, or before any keys, a 503 after one bounded fetch."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgefn.tokens import _new_private_jwk, mint, public_jwks
from shared import errors
from shared.auth import TokenVerifier
from shared.context import Principal
from shared.settings import CoreSettings
from tests.conftest import ISSUER


class Endpoint:
    """A JWKS endpoint whose behaviour the test switches: "ok", "hang" (accepts, never
    answers) or "fail" (500). Counts the requests it received."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.mode = "ok"
        self.requests = 0
        self._release = asyncio.Event()

    async def serve(self, request: Request) -> JSONResponse:
        self.requests += 1
        if self.mode == "hang":
            await self._release.wait()
        if self.mode == "fail":
            return JSONResponse({"error": "down"}, status_code=500)
        return JSONResponse(self.jwks)

    def release(self) -> None:
        self._release.set()


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Endpoint, str, dict[str, Any]]]:
    key = _new_private_jwk()
    ep = Endpoint(public_jwks(key))
    app = Starlette(routes=[Route("/auth/v1/.well-known/jwks.json", ep.serve)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield ep, f"http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json", key
    ep.release()
    server.should_exit = True
    await task


def verifier(url: str, **over: Any) -> TokenVerifier:
    return TokenVerifier(CoreSettings.load(env={}, jwt_issuer=ISSUER, supabase_jwks_url=url, **over))


async def tokens(key: dict[str, Any], n: int) -> list[str]:
    """`n` tokens nobody has verified yet (each its own user), signed with `key`: signed in a
    thread, since a hundred signatures are the test's own work, not the loop's."""
    return await asyncio.to_thread(lambda: [mint(key, user_id=str(uuid.uuid4()), issuer=ISSUER) for _ in range(n)])


async def test_hanging_endpoint_stale_keys_100_new_tokens_answered_at_once(endpoint: Any) -> None:
    ep, url, key = endpoint
    # fresh for 1 s; the fetch deadline (2 s) is longer than the bound asserted below, so a
    # request that waited for the hanging fetch could not pass
    v = verifier(url, jwks_cache_seconds=1)
    assert isinstance(await v.verify((await tokens(key, 1))[0]), Principal)
    await asyncio.sleep(1.1)  # the keys are now stale
    ep.mode = "hang"
    batch = await tokens(key, 100)
    started = time.perf_counter()
    results = await asyncio.gather(*(v.verify(t) for t in batch))
    elapsed = time.perf_counter() - started
    assert all(isinstance(p, Principal) for p in results)
    assert elapsed < 1.0, f"100 new tokens took {elapsed:.2f} s"
    await asyncio.sleep(0.05)
    assert ep.requests == 2  # the first fetch, and ONE background refresh (still hanging)
    assert v.jwks.fetch_count == 2


async def test_unknown_kids_share_the_one_fetch_in_flight(endpoint: Any) -> None:
    ep, url, key = endpoint
    v = verifier(url, jwks_cache_seconds=1)
    await v.verify((await tokens(key, 1))[0])
    await asyncio.sleep(1.1)
    ep.mode = "hang"
    rogue = _new_private_jwk()
    batch = await tokens(rogue, 50) + await tokens(key, 50)
    started = time.perf_counter()
    results = await asyncio.gather(*(v.verify(t) for t in batch), return_exceptions=True)
    elapsed = time.perf_counter() - started
    unknown, known = results[:50], results[50:]
    assert all(isinstance(r, errors.Unauthenticated) and r.code == "TOKEN_KEY_UNKNOWN" for r in unknown)
    assert all(isinstance(p, Principal) for p in known)
    assert elapsed < 2.0 + 1.0  # one fetch deadline, not one per token
    assert ep.requests == 2


async def test_background_refresh_picks_up_a_rotated_key(endpoint: Any) -> None:
    ep, url, key = endpoint
    v = verifier(url, jwks_cache_seconds=1, jwks_refresh_cooldown_seconds=3600)
    await v.verify((await tokens(key, 1))[0])
    new_key = _new_private_jwk()
    ep.jwks = {"keys": public_jwks(key)["keys"] + public_jwks(new_key)["keys"]}
    await asyncio.sleep(1.1)
    assert isinstance(await v.verify((await tokens(key, 1))[0]), Principal)  # stale: served, refresh started
    for _ in range(100):
        if v.jwks.fetch_count == 2 and new_key["kid"] in v.jwks.keys:
            break
        await asyncio.sleep(0.01)
    assert isinstance(await v.verify((await tokens(new_key, 1))[0]), Principal)
    assert ep.requests == 2


async def test_past_the_ceiling_tokens_get_503_until_a_fetch_succeeds(endpoint: Any) -> None:
    ep, url, key = endpoint
    v = verifier(url, jwks_cache_seconds=1, jwks_max_stale_seconds=1)
    await v.verify((await tokens(key, 1))[0])
    ep.mode = "fail"
    await asyncio.sleep(2.1)  # past fresh (1 s) + stale (1 s)
    results = await asyncio.gather(*(v.verify(t) for t in await tokens(key, 20)), return_exceptions=True)
    assert all(isinstance(r, errors.ServiceUnavailable) and r.code == "AUTH_KEYS_UNAVAILABLE" for r in results)
    assert ep.requests == 2  # one fetch for all twenty
    ep.mode = "ok"
    await asyncio.sleep(1.05)  # failed fetches are retried at most once a second
    assert isinstance(await v.verify((await tokens(key, 1))[0]), Principal)
    assert ep.requests == 3


async def test_within_the_ceiling_a_failing_endpoint_is_retried_at_most_once_a_second(endpoint: Any) -> None:
    ep, url, key = endpoint
    v = verifier(url, jwks_cache_seconds=1)
    await v.verify((await tokens(key, 1))[0])
    ep.mode = "fail"
    await asyncio.sleep(1.1)
    started = time.perf_counter()
    while time.perf_counter() - started < 1.5:
        for t in await tokens(key, 5):
            assert isinstance(await v.verify(t), Principal)
        await asyncio.sleep(0.02)
    assert 2 <= ep.requests <= 4  # the first fetch, then one background refresh a second
