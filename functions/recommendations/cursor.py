"""Deck cursors: where a page ended, in the deck's own total order.

A cursor is url-safe base64 of a small JSON document: the ranking strategy of the first
page (pinned: every page of one deck is ranked the same way), the tier, rank and id of the
last card (pages continue strictly after it), the reference time of the recency term (so
ranks do not drift between pages, and ages are counted on one day) and a digest of the
filters it belongs to. It is not secret and needs no signature: whatever it says, the
database applies every filter again, so a forged cursor can only skip ahead in one's own
deck. The one value that reaches beyond one's own deck is the time, which decides the day
ages are counted on (filters and cards, deck() since 0023): a cursor's time must lie
within the last MAX_AGE of the function's clock. A forged one dated years back would
otherwise make a 45-year-old pass as 25, or step through days to find a birthdate; within a
day it shows no more than looking again tomorrow would (an age goes up on the birthday).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from shared import errors

STRATEGIES = frozenset({"hnsw", "vector_exact", "exact", "score"})
#: how long a deck's cursors stay valid: its time must be no older than this ...
MAX_AGE = timedelta(hours=24)
#: ... and no later than the function's clock plus this (clocks of two instances differ)
SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Cursor:
    strategy: str
    tier: int
    rank: float | None
    id: str | None
    as_of: datetime
    filters: str

    def encode(self) -> str:
        doc = [1, self.strategy, self.tier, self.rank, self.id, int(self.as_of.timestamp() * 1000), self.filters]
        return base64.urlsafe_b64encode(orjson.dumps(doc)).rstrip(b"=").decode()


def filters_digest(filters: list[Any]) -> str:
    return hashlib.blake2b(orjson.dumps(filters), digest_size=6).hexdigest()


def _invalid(why: str) -> errors.ValidationFailed:
    return errors.ValidationFailed(f"invalid query: cursor: {why}", code="INVALID_CURSOR",
                                   details=[{"field": "cursor", "message": why}])


def decode(raw: str, filters: str, now: datetime) -> Cursor:
    """The cursor `raw`, checked against the deck's filters and the function's clock `now`."""
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        version, strategy, tier, rank, last_id, as_of_ms, digest = doc
        if version != 1 or strategy not in STRATEGIES or tier not in (0, 1):
            raise ValueError
        if rank is not None:
            rank = float(rank)
            last_id = str(uuid.UUID(last_id))
        elif last_id is not None:
            raise ValueError
        as_of = datetime.fromtimestamp(int(as_of_ms) / 1000, UTC)
    except Exception:
        raise _invalid("not a cursor this endpoint issued") from None
    if digest != filters:
        raise _invalid("it belongs to a deck with other filters")
    if not now - MAX_AGE <= as_of <= now + SKEW:
        raise _invalid("it has expired (or is not yet valid): start again from the first page")
    return Cursor(strategy, tier, rank, last_id, as_of, filters)
