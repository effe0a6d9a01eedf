"""Cached deck pages, re-checked on every read.

What is cached is the ranking, never the eligibility. A page (its card ids in order, the
cursor of the page after it, the ranking strategy, and the digest of what decided the
caller's candidate set) is kept in Redis for `TTL` seconds per caller, filters and cursor.
Serving it still costs one database round trip: `public.deck` (migration 0017b) re-applies
every filter to the cached ids alone (primary-key lookups) and returns those still
eligible, or computes a new page when the caller's own situation changed (the digest
differs: their preferences, published cell, blocks either way, the date).

So a block (either way), a hidden or deleted profile, a move out of range or a changed
preference on either side shows on the very next read, through whichever door it came (the
REST API included), with no invalidation to miss. batch-swipe still bumps `deck:<user>`
after a swipe, and a page cached before the bump is recomputed rather than served a card
short.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from shared.observability import json_log

#: seconds a page's ranking is reused
TTL = 300


def deck_scope(user_id: str) -> str:
    """The data-version scope batch-swipe bumps (spelled there too: each function ships alone)."""
    return f"deck:{user_id}"


@dataclass(frozen=True, slots=True)
class Page:
    ids: list[str]
    next_cursor: str | None
    ranking: str
    digest: str

    def encode(self, version: str) -> str:
        return orjson.dumps([1, version, self.ids, self.next_cursor, self.ranking, self.digest]).decode()

    @classmethod
    def decode(cls, raw: Any, version: str) -> Page | None:
        """The page stored at `version`, or None (none, another version, unreadable)."""
        if not isinstance(raw, str):
            return None
        try:
            fmt, stored_version, ids, next_cursor, ranking, digest = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
        if fmt != 1 or stored_version != version or not ids:
            return None
        return cls([str(i) for i in ids], next_cursor, str(ranking), str(digest))


def keys(services: Any, user_id: str, params: dict[str, Any]) -> tuple[str, str]:
    """(version key, page key) for this caller and query (filters, cursor and limit)."""
    digest = hashlib.blake2b(orjson.dumps(params, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()
    kv = services.kv
    return services.response_cache.version_key(deck_scope(user_id)), kv.key("deck", "{" + user_id + "}", digest)


async def read(services: Any, version_key: str, page_key: str) -> tuple[str | None, Page | None]:
    """(the caller's deck version, the cached page at that version) in one round trip;
    (None, None) when Redis cannot answer: the deck is then computed and not stored."""
    from shared.kv import KVUnavailable

    try:
        version, raw = await services.kv.pipeline([["GET", version_key], ["GET", page_key]])
    except KVUnavailable as exc:
        json_log.log("warning", "deck page cache unavailable", error=repr(exc))
        return None, None
    version = version if isinstance(version, str) else "0"
    return version, Page.decode(raw, version)


async def store(services: Any, page_key: str, version: str, page: Page) -> None:
    """Keep a computed page under the version read before computing it: a swipe that bumped
    the version meanwhile makes it a miss, never a stale hit. Best effort."""
    from shared.kv import KVCommandError, KVUnavailable

    try:
        await services.kv.execute("SET", page_key, page.encode(version), "EX", TTL)
    except (KVUnavailable, KVCommandError) as exc:
        json_log.log("warning", "deck page not cached", error=repr(exc))
