"""APNs provider tokens: ES256 JWTs (`kid` the key id, `iss` the team id, `iat`), minted at
most once every 20 minutes per key, whatever APNs answers, and shared by every instance.

Apple ("Establishing a token-based connection to APNs"): refresh the token no more than once
every 20 minutes and no less than once every 60; a token more than an hour old is refused
(403 ExpiredProviderToken), and tokens recreated more often are refused with 429
TooManyProviderTokenUpdates. Apple counts the team's tokens, not one process's, so N
instances that each mint their own token on start-up look like N updates.

So the token lives in Redis (`<prefix>:apns:jwt:<team>:<key id>`, value `<iat>:<jwt>`, expiring
after an hour). An instance reuses the shared token while it is younger than 50 minutes; the
first instance to find it older mints a new one and stores it with a compare-and-set on the
`iat` it saw (one Lua call), so concurrent instances agree on one new token and the others
adopt it. A 403 about the token makes the next call mint a new one only when the current one
is at least 20 minutes old; before that the token is kept and the delivery waits.

Without Redis (unreachable), each instance keeps its own token in memory with the same
20-minute rule: one mint per instance per 20 minutes at most, so a fleet of N instances
can make N updates in 20 minutes. Keep REDIS_URL (or Upstash) configured wherever more than
one instance sends pushes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from shared.kv import KV, KVUnavailable, Script

#: Apple: refresh no more often than every 20 minutes ...
MIN_INTERVAL = 20 * 60
#: ... and at least every 60 (renewed with 10 minutes to spare)
RENEW_AFTER = 50 * 60
#: a token is worth nothing after an hour
TTL = 60 * 60

# KEYS[1]: the shared token. ARGV: the iat the caller saw ('' when there was none), the new
# record, its TTL. Stores the new record only if the shared one is still the one the caller
# saw; returns whichever record is shared afterwards.
COMPARE_AND_SET = Script(r"""
local current = redis.call('GET', KEYS[1])
if current then
  local iat = string.match(current, '^(%d+):')
  if iat ~= ARGV[1] then return current end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return ARGV[2]
""")


def _parse(record: Any) -> tuple[int, str] | None:
    if not isinstance(record, str):
        return None
    iat, _, token = record.partition(":")
    return (int(iat), token) if iat.isdigit() and token else None


class ProviderTokens:
    def __init__(
        self, kv: KV | None, *, key_id: str, team_id: str, private_key: str, clock: Callable[[], float] = time.time,
    ) -> None:
        self.kv = kv
        self.key_id = key_id
        self.team_id = team_id
        self.private_key = private_key
        self.clock = clock
        self.key = kv.key("apns", "jwt", team_id, key_id) if kv is not None else ""
        #: the token in use (iat, jwt), and one APNs refused (the next call replaces it if it may)
        self.current: tuple[int, str] | None = None
        self.refused_token: str | None = None
        #: tokens this process minted (tests and the benchmark read it)
        self.minted = 0
        self._lock = asyncio.Lock()

    def _fresh(self, record: tuple[int, str] | None) -> bool:
        return record is not None and self.clock() - record[0] < RENEW_AFTER and record[1] != self.refused_token

    async def get(self) -> str:
        """The provider token to send now."""
        if self._fresh(self.current):
            return self.current[1]  # type: ignore[index]
        async with self._lock:
            if self._fresh(self.current):
                return self.current[1]  # type: ignore[index]
            shared = await self._shared()
            if self._fresh(shared):
                self.current = shared
                return shared[1]  # type: ignore[index]
            newest = max((r for r in (shared, self.current) if r is not None), default=None)
            if newest is not None and self.clock() - newest[0] < MIN_INTERVAL:
                self.current = newest  # too soon to mint, whatever was refused: keep it
                return newest[1]
            self.current = await self._mint(shared)
            return self.current[1]

    async def refused(self, token: str) -> float:
        """APNs refused `token` (expired, invalid, or one update too many): the next `get`
        mints a new one if the 20 minutes allow; returns the seconds until they do."""
        self.refused_token = token
        iat = self.current[0] if self.current is not None and self.current[1] == token else None
        if iat is None:
            return 0.0  # an older token: `get` already has a newer one
        return max(0.0, MIN_INTERVAL - (self.clock() - iat))

    async def _shared(self) -> tuple[int, str] | None:
        if self.kv is None:
            return None
        try:
            return _parse(await self.kv.get(self.key))
        except KVUnavailable:
            return None

    async def _mint(self, seen: tuple[int, str] | None) -> tuple[int, str]:
        import jwt

        iat = int(self.clock())
        token = jwt.encode({"iss": self.team_id, "iat": iat}, self.private_key, algorithm="ES256",
                           headers={"kid": self.key_id})
        mine = (iat, token)
        if self.kv is not None:
            try:
                stored = await self.kv.eval(COMPARE_AND_SET, [self.key], [str(seen[0]) if seen else "", f"{iat}:{token}", TTL])
            except KVUnavailable:
                stored = None
            winner = _parse(stored)
            if winner is not None and winner != mine:
                return winner  # another instance minted first: one token for all
        self.minted += 1
        return mine
