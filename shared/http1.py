"""A small HTTP/1.1 client on asyncio streams, for the calls a Lambda cold start makes:
Upstash's REST API (`shared.kv.UpstashKV`) and the signing keys (`shared.auth.JWKSCache`).

Why not httpx there: importing httpx, building a client and making its first request costs
a fresh process about 55 ms of CPU (httpx, httpcore's sync and async stacks, anyio's socket
layer), a fifth of a cold start's init, for two kinds of request: a JSON POST and a GET, on
keep-alive connections. The HTTP/1.1 itself (framing, chunked bodies, keep-alive rules,
header validation) is h11's, the protocol state machine under httpx and uvicorn (~10 ms to
import): this module only moves its bytes over an asyncio stream and keeps connections.
httpx stays for everything else (providers, HTTP/2 push), imported where used.

What it does: one request at a time per connection, idle connections kept per origin and
reused (one the server closed while idle is dropped, not used), TLS with the process's
shared context (`shared.tls`). What it does not: redirects, proxies, compression (it asks
for none), HTTP/2. A connection whose exchange did not finish (an error, or a deadline that
cancelled the caller) is closed, never reused, so no reply is ever read as another
request's. A malformed response is a `ConnectionError`.
"""

from __future__ import annotations

import asyncio
import json as _json
import select
import time
from typing import Any
from urllib.parse import urlsplit

import h11

#: the largest response head or body this client reads (JWKS and Redis replies are small)
MAX_BODY = 16 * 1024 * 1024
#: bytes read from the socket at a time
READ_CHUNK = 64 * 1024
_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]
_Idle = tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection, float]


def _usable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """An idle connection is reused only while nothing has arrived on it: a connection the
    server closed while idle has its EOF queued (seen by the loop), or still sitting in the
    kernel when the loop has not run since (a Lambda thawed after a freeze: the server's FIN
    came while the process was stopped), which the socket tells without reading."""
    if reader.at_eof() or writer.is_closing():
        return False
    sock = writer.get_extra_info("socket")
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed underneath us
        return False
    return not readable


class HTTPStatusError(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class Response:
    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        #: names lower-cased; a repeated header keeps its last value
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        return _json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise HTTPStatusError(self)


class Client:
    """`await client.post(url, json=..., headers=...)`, `await client.get(url)`; each call
    under `timeout` seconds when given (the client's default, else none)."""

    def __init__(self, *, timeout: float | None = None, max_idle: int = 20, verify: Any = None,
                 idle_seconds: float = 30.0) -> None:
        self.timeout = timeout
        self.max_idle = max_idle
        #: the TLS context of https URLs (an `ssl.SSLContext`); None: the process's shared one
        self.verify = verify
        #: an idle connection older than this is closed, not reused (httpx closes them after 5 s;
        #: servers and NATs drop idle connections silently after a while)
        self.idle_seconds = idle_seconds
        self._idle: dict[tuple[str, str, int], list[_Idle]] = {}
        #: connections opened (tests read it)
        self.connects = 0

    async def get(self, url: str, **kw: Any) -> Response:
        return await self.request("GET", url, **kw)

    async def post(self, url: str, **kw: Any) -> Response:
        return await self.request("POST", url, **kw)

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None, json: Any = None,
                      content: bytes | None = None, timeout: float | None = None) -> Response:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        origin = (u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80))
        body = content if json is None else _json.dumps(json, separators=(",", ":")).encode()
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        fields = [("Host", u.netloc.rpartition("@")[2]), ("Accept-Encoding", "identity"), ("User-Agent", "edgefn")]
        if body is not None:
            fields.append(("Content-Length", str(len(body))))
            if json is not None:
                fields.append(("Content-Type", "application/json"))
        fields += list((headers or {}).items())
        try:  # h11 refuses line breaks and other bytes a header may not hold
            request = h11.Request(method=method, target=target, headers=fields)
        except h11.LocalProtocolError as exc:
            raise ValueError(f"bad request: {exc}") from None
        limit = self.timeout if timeout is None else timeout
        if limit is None:
            return await self._exchange(origin, request, body)
        async with asyncio.timeout(limit):
            return await self._exchange(origin, request, body)

    async def _exchange(self, origin: tuple[str, str, int], request: h11.Request, body: bytes | None) -> Response:
        reader, writer, conn = await self._acquire(origin)
        try:
            out = conn.send(request) or b""
            if body:
                out += conn.send(h11.Data(data=body)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
            writer.write(out)
            await writer.drain()
            response = await self._read(reader, conn)
        except h11.ProtocolError as exc:
            writer.transport.abort()
            raise ConnectionError(f"bad HTTP response: {exc}") from None
        except BaseException:  # an error, or a deadline that cancelled us mid-exchange
            writer.transport.abort()
            raise
        idle = self._idle.setdefault(origin, [])
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE and len(idle) < self.max_idle:
            conn.start_next_cycle()
            idle.append((reader, writer, conn, time.monotonic()))
        else:  # Connection: close, HTTP/1.0, a close-delimited body
            writer.transport.abort()
        return response

    async def _acquire(self, origin: tuple[str, str, int]) -> _Conn:
        idle = self._idle.get(origin, [])
        now = time.monotonic()
        while idle:
            reader, writer, conn, since = idle.pop()
            if _usable(reader, writer) and now - since < self.idle_seconds:
                return reader, writer, conn
            writer.transport.abort()
        scheme, host, port = origin
        ssl_context = None
        if scheme == "https":
            from shared import tls

            ssl_context = self.verify or tls.context()
        self.connects += 1
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context,
                                                       server_hostname=host if ssl_context else None)
        return reader, writer, h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_BODY)

    @staticmethod
    async def _read(reader: asyncio.StreamReader, conn: h11.Connection) -> Response:
        status, headers, parts, size = 0, {}, [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_CHUNK))  # b"" is the server's EOF
                continue
            if isinstance(event, h11.InformationalResponse):  # 100 Continue and the like
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                #: names lower-cased; a repeated header keeps its last value
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    raise ConnectionError("response body too large")
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Response(status, headers, b"".join(parts))
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the server closed the connection mid-response")

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, writer, _conn, _since in conns:
                writer.transport.abort()
        self._idle.clear()
