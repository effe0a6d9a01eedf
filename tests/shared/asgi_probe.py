"""Drive an ASGI app with a body the test controls, and see how much of it the app took.

`Streamed` is an ASGI `receive` that hands out a body in chunks and counts the bytes taken,
so a test can say "the response went out and not one byte of the body was read".
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.envelope import loads


class Streamed:
    """A request body in `chunk`-byte messages, `data` itself or `size` filler bytes;
    `taken` counts what the app received. Once the body is all out, the next receive is a
    disconnect."""

    def __init__(self, size: int = 0, *, data: bytes | None = None, chunk: int = 16 * 1024) -> None:
        self.data = data
        self.size = len(data) if data is not None else size
        self.chunk = chunk
        self.taken = 0

    async def __call__(self) -> dict[str, Any]:
        if self.taken >= self.size and self.size > 0:
            await asyncio.sleep(0)
            return {"type": "http.disconnect"}
        n = min(self.chunk, self.size - self.taken)
        part = self.data[self.taken : self.taken + n] if self.data is not None else b"x" * n
        self.taken += n
        return {"type": "http.request", "body": part, "more_body": self.taken < self.size}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    taken: int
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def code(self) -> str | None:
        doc = loads(self.body) if self.body else {}
        return doc.get("error", {}).get("code") if isinstance(doc, dict) else None


async def call(
    app: Any,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: Streamed | None = None,
    client: str = "203.0.113.10",
    declare_length: bool = True,
) -> Answer:
    """One request through `app`. The body's size is declared in Content-Length unless
    `declare_length` is False (a chunked upload, as far as the app can tell)."""
    body = body or Streamed(0)
    raw_headers = [(b"host", b"testserver")]
    if declare_length:
        raw_headers.append((b"content-length", str(body.size).encode()))
    for k, v in (headers or {}).items():
        raw_headers.append((k.lower().encode("latin-1"), v.encode("latin-1")))
    path_only, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path_only, "raw_path": path_only.encode(), "query_string": query.encode(), "root_path": "",
        "headers": raw_headers, "client": (client, 40000), "server": ("testserver", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, body, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    resp_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])}
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], resp_headers, content, body.taken, sent)
