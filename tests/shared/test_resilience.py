"""The circuit breaker and timeouts, against a local HTTP server that can fail, be slow or
answer 429, and records what it received."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared import errors
from shared.resilience import Backoff, CircuitBreaker, CircuitOpen, OutboundHTTP


class Provider:
    def __init__(self) -> None:
        self.mode = "ok"  # ok | fail | slow | throttle
        self.received = 0

    async def endpoint(self, request: Request) -> JSONResponse:
        self.received += 1
        if self.mode == "slow":
            await asyncio.sleep(1.0)
        if self.mode == "fail":
            return JSONResponse({"error": "down"}, status_code=503)
        if self.mode == "throttle":
            return JSONResponse({"error": "slow down"}, status_code=429)
        return JSONResponse({"ok": True})


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, str]]:
    p = Provider()
    app = Starlette(routes=[Route("/send", p.endpoint, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield p, f"http://127.0.0.1:{port}/send"
    server.should_exit = True
    await task


async def test_breaker_opens_after_failures_and_recovers(provider: Any) -> None:
    p, url = provider
    now = [0.0]
    http = OutboundHTTP(failure_threshold=3, reset_timeout=30, clock=lambda: now[0])
    p.mode = "fail"
    for _ in range(3):
        assert (await http.request("fcm", "POST", url)).status_code == 503
    received = p.received
    with pytest.raises(CircuitOpen) as info:
        await http.request("fcm", "POST", url)
    assert p.received == received  # open: the provider is not called at all
    assert int(info.value.headers["Retry-After"]) == 30
    # another provider is unaffected
    assert http.breaker("apns").state == "closed"
    # after the reset timeout one trial goes through; success closes the circuit
    now[0] = 31
    p.mode = "ok"
    assert (await http.request("fcm", "POST", url)).status_code == 200
    assert http.breaker("fcm").state == "closed"
    # a failed trial opens it again at once
    p.mode = "fail"
    for _ in range(3):
        await http.request("fcm", "POST", url)
    now[0] = 62
    await http.request("fcm", "POST", url)
    assert http.breaker("fcm").state == "open"
    await http.aclose()


async def test_timeouts_are_bounded_and_count_as_failures(provider: Any) -> None:
    p, url = provider
    http = OutboundHTTP(failure_threshold=2)
    p.mode = "slow"
    started = time.perf_counter()
    with pytest.raises(errors.DependencyTimeout):
        await http.request("realtime", "POST", url, timeout=0.2)
    assert time.perf_counter() - started < 0.6
    with pytest.raises(errors.DependencyTimeout):
        await http.request("realtime", "POST", url, timeout=0.2)
    assert http.breaker("realtime").state == "open"
    await http.aclose()


async def test_429_and_4xx_do_not_open_the_breaker(provider: Any) -> None:
    p, url = provider
    http = OutboundHTTP(failure_threshold=1)
    p.mode = "throttle"
    for _ in range(3):
        assert (await http.request("realtime", "POST", url)).status_code == 429
    assert http.breaker("realtime").state == "closed"
    await http.aclose()


async def test_unreachable_provider_is_a_service_unavailable() -> None:
    http = OutboundHTTP(failure_threshold=1)
    with pytest.raises(errors.ServiceUnavailable) as info:
        await http.request("apns", "POST", "http://127.0.0.1:9/never", timeout=0.5)
    assert info.value.code == "UPSTREAM_UNAVAILABLE"
    with pytest.raises(CircuitOpen):
        await http.request("apns", "POST", "http://127.0.0.1:9/never")
    await http.aclose()


def test_half_open_lets_one_trial_at_a_time() -> None:
    now = [0.0]
    b = CircuitBreaker("x", failure_threshold=1, reset_timeout=10, clock=lambda: now[0])
    b.record_failure()
    now[0] = 11
    b.before_call()  # the trial
    with pytest.raises(CircuitOpen):
        b.before_call()  # a second caller while the trial runs
    b.record_success()
    b.before_call()


async def test_breaker_limits_come_from_settings(provider: Any) -> None:
    from shared.services import Services
    from shared.settings import CoreSettings

    p, url = provider
    p.mode = "fail"
    services = Services(CoreSettings.load(env={"BREAKER_FAILURE_THRESHOLD": "2", "BREAKER_RESET_SECONDS": "0.2"}))
    try:
        http = services.outbound
        for _ in range(2):
            await http.request("fcm", "POST", url)
        with pytest.raises(CircuitOpen):
            await http.request("fcm", "POST", url)
        assert p.received == 2
        p.mode = "ok"
        await asyncio.sleep(0.25)  # the configured reset, not the 30 s default
        assert (await http.request("fcm", "POST", url)).status_code == 200
        assert p.received == 3
    finally:
        await services.aclose()


def test_a_tripped_breaker_is_open_at_once_and_lets_a_trial_through_after_the_reset() -> None:
    now = [0.0]
    b = CircuitBreaker("fcm", failure_threshold=5, reset_timeout=30.0, clock=lambda: now[0])
    b.trip()  # one answer that says the configuration is wrong: no need to wait for five
    with pytest.raises(CircuitOpen):
        b.before_call()
    now[0] = 30.0
    b.before_call()  # the trial
    b.record_success()
    assert b.state == "closed"


def test_backoff_grows_with_jitter_under_a_ceiling_and_honours_a_floor() -> None:
    b = Backoff(base=2.0, ceiling=100.0, jitter=0.5)
    assert [b.delay(n, rand=lambda: 0.0) for n in range(1, 9)] == [2, 4, 8, 16, 32, 64, 100, 100]
    assert [b.delay(n, rand=lambda: 1.0) for n in (1, 2, 8)] == [1, 2, 50]  # the most jitter takes half
    assert b.delay(1, floor=60.0, rand=lambda: 0.0) == 60.0  # a provider's Retry-After beats the ceiling
    delays = [b.delay(3) for _ in range(200)]
    assert 4.0 <= min(delays) < max(delays) <= 8.0  # spread, not all at once


async def test_a_multiplexed_request_times_out_alone(provider: Any) -> None:
    """HTTP/2 shares a connection: the deadline cancels the request, the transport read
    never times out (httpcore would fail every stream on the connection)."""
    import httpx

    from shared import tls

    p, url = provider
    async with tls.client() as client:
        http = OutboundHTTP(client, multiplexed=True)
        p.mode = "slow"
        with pytest.raises(errors.DependencyTimeout):
            await http.request("apns", "POST", url, timeout=0.2)
