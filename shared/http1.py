"""A small HTTP/1.1 client on asyncio streams, for the calls a Lambda cold start makes:
Upstash's REST API (`shared.kv.UpstashKV`) and the signing keys (`shared.auth.JWKSCache`).

Why not httpx there: importing httpx, building a client and making its first request costs
a fresh process about 55 ms of CPU (httpx, httpcore's sync and async stacks, anyio's socket
layer, h11), a fifth of a cold start's init, for two kinds of request this module makes in
~150 lines: a JSON POST and a GET, on keep-alive connections. httpx stays for everything
else (providers, HTTP/2 push), imported where used.

What it does: one request at a time per connection, idle connections kept per origin and
reused (one the server closed while idle is dropped, not used), `Content-Length` and
chunked bodies, TLS with the process's shared context (`shared.tls`). What it does not:
redirects, proxies, compression (it asks for none), HTTP/2. A connection whose exchange
did not finish (an error, or a deadline that cancelled the caller) is closed, never reused,
so no reply is ever read as another request's.
"""

from __future__ import annotations

import asyncio
import json as _json
from typing import Any
from urllib.parse import urlsplit

#: the largest response head or body this client reads (JWKS and Redis replies are small)
MAX_BODY = 16 * 1024 * 1024
_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


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

    def __init__(self, *, timeout: float | None = None, max_idle: int = 20, verify: Any = None) -> None:
        self.timeout = timeout
        self.max_idle = max_idle
        #: the TLS context of https URLs (an `ssl.SSLContext`); None: the process's shared one
        self.verify = verify
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
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
        head = self._head(method, u.path or "/", u.query, u.netloc.rpartition("@")[2], headers, body, json is not None)
        limit = self.timeout if timeout is None else timeout
        if limit is None:
            return await self._exchange(origin, method, head, body)
        async with asyncio.timeout(limit):
            return await self._exchange(origin, method, head, body)

    @staticmethod
    def _head(method: str, path: str, query: str, host: str, headers: dict[str, str] | None, body: bytes | None,
              is_json: bool) -> bytes:
        lines = [f"{method} {path}{'?' + query if query else ''} HTTP/1.1", f"Host: {host}",
                 "Accept-Encoding: identity", "User-Agent: edgefn"]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
            if is_json:
                lines.append("Content-Type: application/json")
        for name, value in (headers or {}).items():
            if any(c in name or c in value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _exchange(self, origin: tuple[str, str, int], method: str, head: bytes, body: bytes | None) -> Response:
        reader, writer = await self._acquire(origin)
        try:
            writer.write(head + body if body else head)
            await writer.drain()
            response, reusable = await self._read(reader, method)
        except BaseException:  # an error, or a deadline that cancelled us mid-exchange
            writer.transport.abort()
            raise
        idle = self._idle.setdefault(origin, [])
        if reusable and len(idle) < self.max_idle:
            idle.append((reader, writer))
        else:
            writer.transport.abort()
        return response

    async def _acquire(self, origin: tuple[str, str, int]) -> _Conn:
        idle = self._idle.get(origin, [])
        while idle:
            reader, writer = idle.pop()
            # a connection the server closed while it sat idle has its EOF queued already
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.transport.abort()
        scheme, host, port = origin
        ssl_context = None
        if scheme == "https":
            from shared import tls

            ssl_context = self.verify or tls.context()
        self.connects += 1
        return await asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=host if ssl_context else None,
                                             limit=MAX_BODY)

    @staticmethod
    async def _read(reader: asyncio.StreamReader, method: str) -> tuple[Response, bool]:
        status_line = (await reader.readuntil(b"\r\n")).decode("latin-1")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1."):
            raise ConnectionError(f"not an HTTP/1 response: {status_line[:40]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        raw = await reader.readuntil(b"\r\n\r\n")
        for line in raw.decode("latin-1").split("\r\n"):
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close" and version != "HTTP/1.0"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, b""), keep
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            size = 0
            while True:
                n = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                size += n
                if size > MAX_BODY:
                    raise ConnectionError("response body too large")
                if n == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    return Response(status, headers, b"".join(parts)), keep
                parts.append(await reader.readexactly(n))
                await reader.readexactly(2)
        if "content-length" in headers:
            n = int(headers["content-length"])
            if n > MAX_BODY:
                raise ConnectionError("response body too large")
            return Response(status, headers, await reader.readexactly(n)), keep
        content = await reader.read()  # delimited by the server closing the connection
        if len(content) > MAX_BODY:
            raise ConnectionError("response body too large")
        return Response(status, headers, content), False

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, writer in conns:
                writer.transport.abort()
        self._idle.clear()
