"""Edge caching: explicit Cache-Control, ETag / 304, and a Redis response cache.

Entries are keyed by route, principal and parameters, and carry the data version they
were computed at; writers invalidate by bumping the version (one INCR, no key scan).
The lookup rides in the rate limiter's round trip (`shared.ratelimit`); on a miss, the
same round trip takes a single-flight lock, so 100 concurrent misses run the handler
once. When the handler fails because a backing service is down, a stale entry is served
and marked stale.

An entry is stored as `version \\n fresh_until_ms \\n etag \\n metadata \\n data` so the Lua
script can judge freshness without decoding JSON, and a hit splices the stored data into
the envelope without decoding it either.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from shared.envelope import dumps, loads
from shared.kv import KV


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How a route may be cached.

    scope="private": per user; browsers revalidate with If-None-Match (304), the CDN never
    shares it. scope="public": the same for everyone; the CDN may keep it `s_maxage`
    seconds and serve it stale while revalidating."""

    ttl: int = 300
    scope: Literal["private", "public"] = "private"
    #: how long a stale entry is kept to serve when the database is down
    stale_ttl: int = 3600
    browser_max_age: int = 0
    s_maxage: int = 60
    stale_while_revalidate: int = 30
    #: the data-version key's scope for this principal, e.g. lambda ctx: f"dashboard:{ctx.user_id}"
    version: Callable[[Any], str] | None = None
    lock_ms: int = 5000

    def vary(self) -> str:
        return "Accept-Encoding" if self.scope == "public" else "Authorization, Accept-Encoding"

    def cache_control(self) -> str:
        if self.scope == "public":
            return (
                f"public, max-age={self.browser_max_age}, s-maxage={self.s_maxage}, "
                f"stale-while-revalidate={self.stale_while_revalidate}"
            )
        if self.browser_max_age > 0:
            return f"private, max-age={self.browser_max_age}"
        return "private, no-cache"


@dataclass(frozen=True, slots=True)
class Payload:
    """A route's result as cached: its data already serialised (a hit splices it into the
    envelope without decoding it) and the handler's metadata."""

    data_json: str
    metadata: dict[str, Any]

    @classmethod
    def of(cls, data: Any, metadata: dict[str, Any]) -> Payload:
        return cls(dumps(data).decode(), metadata)

    def etag(self) -> str:
        digest = hashlib.blake2b(self.data_json.encode(), digest_size=10)
        digest.update(dumps(self.metadata))
        return '"' + digest.hexdigest() + '"'

    def envelope(self, metadata: dict[str, Any]) -> bytes:
        return b'{"success":true,"data":' + self.data_json.encode() + b',"metadata":' + dumps(metadata) + b"}"


@dataclass(frozen=True, slots=True)
class Entry:
    version: str
    fresh_until_ms: int
    etag: str
    payload: Payload

    def is_fresh(self, version: str | None, now_ms: int) -> bool:
        return self.version == (version or "0") and self.fresh_until_ms > now_ms


def encode_entry(version: str | None, fresh_until_ms: int, etag: str, payload: Payload) -> str:
    # one line each, then the data; orjson never writes a raw newline
    meta = dumps(payload.metadata).decode()
    return f"{version or '0'}\n{fresh_until_ms}\n{etag}\n{meta}\n{payload.data_json}"


def decode_entry(raw: str | None) -> Entry | None:
    if not raw:
        return None
    try:
        version, until, etag, meta, data = raw.split("\n", 4)
        return Entry(version, int(until), etag, Payload(data, loads(meta)))
    except (ValueError, TypeError):
        return None


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    candidates = [c.strip().removeprefix("W/") for c in if_none_match.split(",")]
    return etag in candidates


class ResponseCache:
    def __init__(self, kv: KV) -> None:
        self.kv = kv
        #: in-process single flight: entry key -> future of the computation in flight's
        #: (payload, etag, "hit" or "stale")
        self._inflight: dict[str, asyncio.Future[tuple[Payload, str, str]]] = {}

    def version_key(self, scope: str) -> str:
        return self.kv.key("ver", scope)

    def keys_for(self, route: str, principal: str, params: dict[str, Any], version_scope: str | None) -> tuple[str, str, str]:
        digest = hashlib.blake2b(dumps(sorted(params.items())), digest_size=12).hexdigest() if params else "-"
        tag = "{" + principal + "}"
        entry_key = self.kv.key("rc", route, tag, digest)
        return (
            self.version_key(version_scope) if version_scope else "",
            entry_key,
            entry_key + ":lock",
        )

    async def store(
        self, entry_key: str, lock_key: str | None, version: str | None, now_ms: int, policy: CachePolicy, payload: Payload, etag: str
    ) -> None:
        raw = encode_entry(version, now_ms + policy.ttl * 1000, etag, payload)
        cmds: list[list[Any]] = [["SET", entry_key, raw, "EX", policy.ttl + policy.stale_ttl]]
        if lock_key:
            cmds.append(["DEL", lock_key])
        results = await self.kv.pipeline(cmds)
        if isinstance(results[0], Exception):  # Redis refused the SET (e.g. out of memory)
            raise results[0]

    async def release(self, lock_key: str) -> None:
        await self.kv.delete(lock_key)

    async def wait_for_result(
        self, entry_key: str, lock_key: str, version: str | None, now_ms: int, budget_ms: int
    ) -> tuple[Payload, str, str] | None:
        """Someone else holds the lock: share its result, as (payload, etag, "hit" or
        "stale"). A computation in this process is awaited (it may start after this request
        learnt the lock was taken: replies can arrive out of order); one in another process
        is polled for briefly. None when no fresh entry came in time, or when the lock was
        released without one (the holder failed): the caller then computes it itself."""
        waited = 0
        delay = 0.01
        while True:
            inflight = self._inflight.get(entry_key)
            if inflight is not None:
                return await asyncio.shield(inflight)
            if waited >= budget_ms:
                return None
            await asyncio.sleep(delay)
            waited += int(delay * 1000)
            raw, locked = await self.kv.pipeline([["GET", entry_key], ["EXISTS", lock_key]])
            entry = decode_entry(raw if isinstance(raw, str) else None)
            if entry is not None and entry.is_fresh(version, now_ms):
                return entry.payload, entry.etag, "hit"
            if locked == 0 and entry_key not in self._inflight:
                return None
            delay = min(delay * 2, 0.1)

    async def bump(self, scope: str) -> int:
        """Invalidate every cached response that depends on `scope` (one INCR)."""
        return await self.kv.incr(self.version_key(scope))
