"""Key-value fixtures: both KV backends against the run's real Redis (the REST one through
`edgefn.upstash_bridge`), and network fault helpers (a server that never answers, a closed
port, a TCP proxy that can go silent or drop everything)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import KEY_PREFIX

BACKENDS = ["redis", "upstash"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def make_kv(redis_url: str, bridge: Any) -> AsyncIterator[Callable[..., Any]]:
    """make_kv(backend, endpoint=None, timeout=0.5): a KV for `backend` ("redis" or
    "upstash") at `endpoint` ("host:port"; default: the run's Redis, or the bridge);
    closed when the test ends."""
    from shared.kv import KV, RedisKV, UpstashKV

    made: list[KV] = []
    db = urlsplit(redis_url).path or "/0"

    def _make(backend: str, endpoint: str | None = None, *, timeout: float = 0.5) -> KV:
        kv: KV
        if backend == "redis":
            url = f"redis://{endpoint}{db}" if endpoint else redis_url
            kv = RedisKV(url, prefix=KEY_PREFIX, timeout=timeout)
        else:
            url = f"http://{endpoint}" if endpoint else bridge.base_url
            kv = UpstashKV(url, bridge.token, prefix=KEY_PREFIX, timeout=timeout)
        made.append(kv)
        return kv

    yield _make
    bridge.delay_seconds = 0.0
    bridge.fail = False
    for kv in made:
        await kv.aclose()


@pytest.fixture
def kv(backend: str, make_kv: Callable[..., Any]) -> Any:
    return make_kv(backend)


@pytest.fixture
def new_key(kv: Any) -> Callable[[], str]:
    """new_key() -> a fresh key under the run's prefix."""
    return lambda: kv.key("kv", uuid.uuid4().hex)


def upstream_for(backend: str, redis_url: str, bridge: Any) -> tuple[str, int]:
    if backend == "redis":
        u = urlsplit(redis_url)
        return u.hostname or "127.0.0.1", u.port or 6379
    return bridge.host, bridge.port


# -- network faults ------------------------------------------------------------------------


class SilentServer:
    """Accepts TCP connections and never answers."""

    def __init__(self) -> None:
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> SilentServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    async def close(self) -> None:
        for w in self._writers:
            w.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def silent_server() -> AsyncIterator[SilentServer]:
    srv = await SilentServer().start()
    yield srv
    await srv.close()


@pytest.fixture
def closed_port() -> int:
    """A local port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class TcpProxy:
    """Forwards a local port to an upstream. `pause()` holds all traffic (the upstream
    looks silent) until `resume()`; `close()` drops every connection and stops listening;
    `reopen()` listens again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.base_events.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._transports |= {writer.transport, up_writer.transport}
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self.flowing.wait()
                dst.write(data)
                await dst.drain()
        except Exception:
            pass
        finally:
            dst.transport.abort()
            self._transports.discard(dst.transport)

    def pause(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for t in list(self._transports):
            t.abort()
        self._transports.clear()

    async def reopen(self) -> None:
        await self.start()


@pytest.fixture
async def proxy(backend: str, redis_url: str, bridge: Any) -> AsyncIterator[TcpProxy]:
    """A TcpProxy in front of the backend's server (Redis, or the bridge)."""
    p = await TcpProxy(upstream_for(backend, redis_url, bridge)).start()
    yield p
    p.resume()
    await p.close()
