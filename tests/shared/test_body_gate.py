"""Authentication and the rate limit come before the body; every route caps its body.

Proved from outside two ways: in process with an ASGI `receive` that counts the bytes the
app took (`asgi_probe.Streamed`), and over real HTTP to uvicorn, where a client declares a
body, sends none of it, and gets its 401 anyway (while an admitted request on the same
server does wait for its body). Real Redis counts the anonymous limit.
"""

from __future__ import annotations

import asyncio
import importlib
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from pydantic import BaseModel, ConfigDict

from functions import FUNCTIONS
from shared.app import FunctionApp
from shared.context import RequestContext
from shared.inputs import DEFAULT_MAX_BODY
from shared.services import Services
from shared.settings import CoreSettings
from tests.conftest import KEY_PREFIX
from tests.shared.asgi_probe import Streamed, call

JSON = {"content-type": "application/json"}
ONE_MIB = 1024 * 1024


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


def gate_app() -> tuple[FunctionApp, dict[str, int]]:
    ran = {"items": 0, "raw": 0}
    fn = FunctionApp("gate", settings=CoreSettings)

    @fn.post("/items", auth="required", body=Item)
    async def items(ctx: RequestContext) -> Any:
        ran["items"] += 1
        return {"name": ctx.body.name}

    @fn.post("/raw", auth="required", raw_body=True, max_body=2 * ONE_MIB)
    async def raw(ctx: RequestContext) -> Any:
        ran["raw"] += 1
        return {"bytes": len(await ctx.request.body())}

    return fn, ran


def some_ip() -> str:
    """A client address no other test uses (each has its own anonymous window)."""
    return f"198.51.{random.randrange(256)}.{random.randrange(1, 255)}"


@pytest.fixture
async def gate(base_env: dict[str, Any]) -> AsyncIterator[tuple[FunctionApp, dict[str, int], Services]]:
    fn, ran = gate_app()
    settings = CoreSettings.load(env={}, **{**base_env, "rate_limit_anonymous": 3, "rate_limit_free": 2})
    services = Services(settings)
    fn.configure(settings=settings, services=services)
    yield fn, ran, services
    await services.aclose()


@pytest.mark.parametrize("token", ["none", "garbage", "wrong-key", "expired"])
async def test_refused_token_gets_401_before_a_byte_is_read(gate: Any, make_token: Any, token: str) -> None:
    fn, ran, _ = gate
    headers = dict(JSON)
    if token == "garbage":
        headers["authorization"] = "Bearer not-a-jwt"
    elif token == "wrong-key":
        headers["authorization"] = "Bearer " + make_token(alg="HS256", secret="another-projects-secret-of-32-bytes!!")
    elif token == "expired":
        headers["authorization"] = "Bearer " + make_token(expires_in=-3600)
    for path in ("/functions/v1/gate/items", "/functions/v1/gate/raw"):
        body = Streamed(ONE_MIB if path.endswith("raw") else 32 * 1024)
        r = await call(fn, "POST", path, headers=headers, body=body, client=some_ip())
        assert r.status == 401, r.body
        assert r.taken == 0, f"{path}: {r.taken} bytes of the body were read before the 401"
    assert ran == {"items": 0, "raw": 0}


async def test_unauthenticated_requests_spend_the_anonymous_limit_then_429_without_redis(gate: Any) -> None:
    fn, ran, services = gate
    ip = some_ip()
    codes = []
    for _ in range(3):
        r = await call(fn, "POST", "/functions/v1/gate/items", headers=JSON, body=Streamed(1000), client=ip)
        codes.append((r.status, r.code, r.taken))
        assert r.headers["ratelimit-limit"] == "3"
    assert codes == [(401, "AUTH_REQUIRED", 0)] * 3
    r = await call(fn, "POST", "/functions/v1/gate/items", headers=JSON, body=Streamed(1000), client=ip)
    assert (r.status, r.code, r.taken) == (429, "RATE_LIMITED", 0)
    assert int(r.headers["retry-after"]) >= 1
    # from now on the address is refused from memory: no Redis round trip, no body
    trips = services.kv.round_trips
    for path, size in (("/functions/v1/gate/items", 60_000), ("/functions/v1/gate/raw", ONE_MIB)):
        r = await call(fn, "POST", path, headers=JSON, body=Streamed(size), client=ip)
        assert (r.status, r.taken) == (429, 0)
    assert services.kv.round_trips == trips
    # another address is not affected
    r = await call(fn, "POST", "/functions/v1/gate/items", headers=JSON, body=Streamed(1000), client=some_ip())
    assert (r.status, r.code) == (401, "AUTH_REQUIRED")
    assert ran["items"] == 0


async def test_a_signed_in_caller_over_its_limit_is_refused_before_its_body(gate: Any, make_token: Any) -> None:
    fn, ran, _ = gate
    headers = {**JSON, "authorization": "Bearer " + make_token(tier="free")}
    for _ in range(2):
        r = await call(fn, "POST", "/functions/v1/gate/items", headers=headers, body=Streamed(data=b'{"name": "ok"}'), client=some_ip())
        assert r.status == 200
    r = await call(fn, "POST", "/functions/v1/gate/items", headers=headers, body=Streamed(40_000), client=some_ip())
    assert (r.status, r.code, r.taken) == (429, "RATE_LIMITED", 0)


async def test_admitted_request_reads_and_parses_its_body(gate: Any, make_token: Any) -> None:
    """The counting receive does see reads: an admitted request takes its whole body."""
    fn, ran, _ = gate
    headers = {**JSON, "authorization": "Bearer " + make_token()}
    doc = b'{"name": "' + b"a" * 50_000 + b'"}'
    r = await call(fn, "POST", "/functions/v1/gate/items", headers=headers, body=Streamed(data=doc), client=some_ip())
    assert (r.status, r.taken) == (200, len(doc))
    assert ran["items"] == 1


async def test_declared_size_above_the_cap_is_413_before_auth_and_unread(gate: Any, make_token: Any) -> None:
    fn, ran, services = gate
    trips = services.kv.round_trips
    for auth in ({}, {"authorization": "Bearer " + make_token()}):
        r = await call(fn, "POST", "/functions/v1/gate/items", headers={**JSON, **auth}, body=Streamed(DEFAULT_MAX_BODY + 1))
        assert (r.status, r.code, r.taken) == (413, "PAYLOAD_TOO_LARGE", 0)
        r = await call(fn, "POST", "/functions/v1/gate/raw", headers={**JSON, **auth}, body=Streamed(2 * ONE_MIB + 1))
        assert (r.status, r.code, r.taken) == (413, "PAYLOAD_TOO_LARGE", 0)
    assert services.kv.round_trips == trips  # refused before the rate limiter was asked
    assert ran == {"items": 0, "raw": 0}


async def test_undeclared_body_stops_being_read_at_the_cap(gate: Any, make_token: Any) -> None:
    fn, ran, _ = gate
    headers = {**JSON, "authorization": "Bearer " + make_token()}
    body = Streamed(8 * ONE_MIB, chunk=4096)
    r = await call(fn, "POST", "/functions/v1/gate/items", headers=headers, body=body, client=some_ip(), declare_length=False)
    assert (r.status, r.code) == (413, "PAYLOAD_TOO_LARGE")
    assert DEFAULT_MAX_BODY < r.taken <= DEFAULT_MAX_BODY + 4096
    assert ran["items"] == 0


# -- every route of every function ---------------------------------------------------------

BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
#: the most a function may read of a body without a cap of its own: the request limit of a
#: Lambda Function URL (6 MB); raw routes without `max_body` cap in their own reader
PLATFORM_LIMIT = 6 * 1000 * 1000
#: every secret a function needs to get as far as reading a body
CONFIGURED = {
    "paystack_secret_key": "sk_test_body_gate", "revenuecat_webhook_auth": "Bearer body-gate",
    "orchestrator_drain_secret": "body-gate-drain", "db_webhook_secret": "body-gate-db",
}  # fmt: skip


def all_routes() -> list[tuple[str, str, str]]:
    out = []
    for name, module in sorted(FUNCTIONS.items()):
        fn = importlib.import_module(module).fn
        for route in fn.routes:
            if route.method in BODY_METHODS:
                path = route.path.replace("{media_id}", str(uuid.uuid4())).replace("{", "").replace("}", "")
                out.append((name, module, f"{route.method} {path}"))
    return out


@pytest.mark.parametrize(("name", "module", "route"), all_routes(), ids=[r[2] + " " + r[0] for r in all_routes()])
async def test_every_route_refuses_an_oversized_body_unread(
    name: str, module: str, route: str, base_env: dict[str, Any], make_token: Any
) -> None:
    fn = importlib.import_module(module).fn
    settings = fn.settings_cls.load(env={}, **{**base_env, **CONFIGURED})
    services = Services(settings)
    fn.configure(settings=settings, services=services)
    method, path = route.split(" ", 1)
    url = f"/functions/v1/{name}{path}"
    headers = {**JSON, "authorization": "Bearer " + make_token(tier="paid")}
    if path == "/revenuecat":  # its own Authorization, checked before the body
        headers["authorization"] = CONFIGURED["revenuecat_webhook_auth"]
    try:
        # declared: refused without a byte read (413, or the upload's 415 for a JSON type)
        r = await call(fn, method, url, headers=headers, body=Streamed(64 * ONE_MIB), client=some_ip())
        assert r.status in (413, 415) and r.taken == 0, (r.status, r.body, r.taken)
        # undeclared: the reading stops well before the platform's own limit
        body = Streamed(64 * ONE_MIB, chunk=64 * 1024)
        r = await call(fn, method, url, headers=headers, body=body, client=some_ip(), declare_length=False)
        assert 400 <= r.status < 500, (r.status, r.body)
        assert r.taken <= PLATFORM_LIMIT, f"{route}: read {r.taken} bytes"
    finally:
        await services.aclose()


# -- over real HTTP ----------------------------------------------------------------------------


@pytest.fixture
async def gate_server(base_env: dict[str, Any]) -> AsyncIterator[tuple[int, dict[str, int]]]:
    fn, ran = gate_app()
    # a key prefix of its own: every request here comes from 127.0.0.1
    settings = CoreSettings.load(env={}, **{**base_env, "key_prefix": f"{KEY_PREFIX}:gate:{uuid.uuid4().hex[:8]}",
                                            "rate_limit_anonymous": 5})
    services = Services(settings)
    fn.configure(settings=settings, services=services)
    server = uvicorn.Server(uvicorn.Config(fn, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1], ran
    server.should_exit = True
    await task
    await services.aclose()


async def send_head(port: int, path: str, length: int, extra: str = "") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
         f"Content-Length: {length}\r\n{extra}\r\n").encode()
    )  # fmt: skip
    await writer.drain()
    return reader, writer


async def status_line(reader: asyncio.StreamReader, timeout: float) -> bytes:
    return await asyncio.wait_for(reader.readline(), timeout)


async def test_over_http_the_401_arrives_while_the_body_is_still_unsent(gate_server: Any, make_token: Any) -> None:
    port, ran = gate_server
    # no token: the answer comes with the whole declared body still unsent
    for path in ("/functions/v1/gate/items", "/functions/v1/gate/raw"):
        reader, writer = await send_head(port, path, 60_000 if path.endswith("items") else 2 * ONE_MIB)
        assert (await status_line(reader, 5.0)).startswith(b"HTTP/1.1 401 ")
        writer.close()
    # a signed-in request on the same server does wait for its body, then is answered
    doc = b'{"name": "x"}'
    reader, writer = await send_head(port, "/functions/v1/gate/items", len(doc), f"Authorization: Bearer {make_token()}\r\n")
    with pytest.raises(TimeoutError):
        await status_line(reader, 0.5)
    writer.write(doc)
    await writer.drain()
    assert (await status_line(reader, 5.0)).startswith(b"HTTP/1.1 200 ")
    writer.close()
    assert ran == {"items": 1, "raw": 0}
    # and the unauthenticated requests spent the address's anonymous limit (5): 2 above,
    # 3 more 401s, then 429s, still with no body sent
    statuses = []
    for _ in range(5):
        reader, writer = await send_head(port, "/functions/v1/gate/items", 60_000)
        statuses.append((await status_line(reader, 5.0)).split()[1])
        writer.close()
    assert statuses == [b"401"] * 3 + [b"429"] * 2
