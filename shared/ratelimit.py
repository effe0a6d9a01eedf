"""Tiered rate limiting and quotas: one Lua script, one Redis round trip.

The script reads the caller's tier (`tier:{user}`, written by the webhooks when a
subscription changes), picks that tier's limit, and applies an exact sliding window (a
sorted-set log of admissions, trimmed to the window) atomically. The same call can also
read the route's data version and cached entry and take the single-flight lock on a miss
(see `shared.cache`), so a cached authenticated request costs exactly one round trip.

Decisions are values, not exceptions: the pipeline turns them into 429s and headers.
Identifiers that were refused are remembered in-process until their reset, so a client
hammering after a 429 costs no Redis call.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.kv import KV, Script

TIERS = ("anonymous", "free", "paid", "admin")
#: the tiers a signed-in user can have (a token's `app_metadata.tier`, the webhooks' record)
USER_TIERS = frozenset(TIERS) - {"anonymous"}
_TIERS = frozenset(TIERS)
DEFAULT_LIMITS: Mapping[str, int] = {"anonymous": 10, "free": 100, "paid": 500, "admin": 1000}

# KEYS: 1 tier key, 2 window key, 3 version key, 4 entry key, 5 lock key
# ARGV[1], space-separated (one argument keeps the client's command packing cheap):
#   1 hint tier, 2 window ms, 3 cost, 4 member prefix, 5-8 limits (anonymous, free, paid,
#   admin), 9 partial (1: grant what fits), 10 cache (1: read entry), 11 lock ms,
#   12 limit on (1) or off (0)
LUA = r"""
local packed = ARGV[1]
local ARGV = {}
for a in string.gmatch(packed, '%S+') do ARGV[#ARGV + 1] = a end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tier = redis.call('GET', KEYS[1])
local from_redis = 1
if not tier then tier = ARGV[1]; from_redis = 0 end
local limits = {anonymous = tonumber(ARGV[5]), free = tonumber(ARGV[6]), paid = tonumber(ARGV[7]), admin = tonumber(ARGV[8])}
local limit = limits[tier]
if not limit then tier = 'free'; limit = limits['free'] end
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local granted = cost
local remaining = limit
local reset_ms = 0
local retry_ms = 0
if ARGV[12] == '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  local used = redis.call('ZCARD', KEYS[2])
  if used + cost <= limit then
    granted = cost
  elseif ARGV[9] == '1' then
    granted = math.max(0, limit - used)
  else
    granted = 0
  end
  for i = 1, granted do
    redis.call('ZADD', KEYS[2], now, ARGV[4] .. ':' .. i)
  end
  if granted > 0 then redis.call('PEXPIRE', KEYS[2], window) end
  remaining = limit - used - granted
  -- reset: when the whole quota is back, i.e. one window after the newest admission (now,
  -- when this request was admitted: no lookup on the hot path)
  if granted > 0 then
    reset_ms = window
  else
    local newest = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    if newest[2] then reset_ms = tonumber(newest[2]) + window - now else reset_ms = window end
  end
  if granted < cost then
    -- the entry whose expiry frees enough room for the rest of this request
    local need = used + granted + (cost - granted) - limit
    local idx = math.min(need, used + granted) - 1
    if idx < 0 then idx = 0 end
    local e = redis.call('ZRANGE', KEYS[2], idx, idx, 'WITHSCORES')
    if e[2] then retry_ms = tonumber(e[2]) + window - now else retry_ms = window end
    if cost > limit then retry_ms = -1 end
  end
end
local version = false
local entry = false
local lock = 0
if ARGV[10] == '1' and granted > 0 then
  if KEYS[3] ~= '' then version = redis.call('GET', KEYS[3]) end
  entry = redis.call('GET', KEYS[4])
  local fresh = false
  if entry then
    local v, until_ms = string.match(entry, '^([^\n]*)\n([^\n]*)\n')
    fresh = (v == (version or '0')) and (tonumber(until_ms) or 0) > now
  end
  if not fresh then
    if redis.call('SET', KEYS[5], ARGV[4], 'NX', 'PX', tonumber(ARGV[11])) then lock = 1 end
  end
end
return {tier, from_redis, granted, limit, remaining, reset_ms, retry_ms, version, entry, lock, now}
"""
SCRIPT = Script(LUA)


@dataclass(frozen=True, slots=True)
class RateRule:
    """A limit per tier over a window. `cost` may depend on the request."""

    name: str = "requests"
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    window_seconds: int = 60
    cost: int | Callable[[Any], int] = 1

    #: the four tier limits as the script reads them ("anonymous free paid admin")
    limits_arg: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits_arg", " ".join(str(self.limits.get(t, DEFAULT_LIMITS[t])) for t in TIERS))

    def with_limits(self, **limits: int) -> RateRule:
        return RateRule(self.name, {**self.limits, **limits}, self.window_seconds, self.cost)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    tier: str
    tier_from_redis: bool
    granted: int
    cost: int
    limit: int
    remaining: int
    reset_seconds: int
    retry_after: int  # seconds; -1 when the request can never fit (cost above the limit)
    now_ms: int
    version: str | None = None
    entry: str | None = None
    lock: bool = False

    def headers(self) -> dict[str, str]:
        reset = str(max(self.reset_seconds, 0))
        h = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(self.remaining, 0)),
            "RateLimit-Reset": reset,
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(self.remaining, 0)),
            "X-RateLimit-Reset": str(int(self.now_ms / 1000) + max(self.reset_seconds, 0)),
        }
        if not self.allowed and self.retry_after >= 0:
            h["Retry-After"] = str(max(self.retry_after, 1))
        return h


class BlockedCache:
    """In-process memory of refused identifiers until their reset (bounded, expiring)."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._until: OrderedDict[str, tuple[float, Decision]] = OrderedDict()

    def get(self, key: str) -> Decision | None:
        item = self._until.get(key)
        if item is None:
            return None
        until, decision = item
        if until <= self.clock():
            self._until.pop(key, None)
            return None
        return decision

    def put(self, key: str, seconds: float, decision: Decision) -> None:
        if seconds <= 0:
            return
        self._until[key] = (self.clock() + seconds, decision)
        self._until.move_to_end(key)
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)

    def clear(self) -> None:
        self._until.clear()


def tier_key(kv: KV, user_id: str) -> str:
    return kv.key("tier", "{" + user_id + "}")


class RateLimiter:
    def __init__(self, kv: KV, *, blocked: BlockedCache | None = None) -> None:
        self.kv = kv
        self.blocked = blocked or BlockedCache()

    def window_key(self, rule: RateRule, identity: str) -> str:
        # hash tag: a user's keys share a slot, so the script is cluster-safe
        return self.kv.key("rl", rule.name, "{" + identity + "}")

    async def check(
        self,
        rule: RateRule,
        identity: str,
        *,
        user_id: str | None = None,
        tier_hint: str = "free",
        cost: int = 1,
        partial: bool = False,
        cache_keys: tuple[str, str, str] | None = None,
        lock_ms: int = 5000,
        limit: bool = True,
    ) -> Decision:
        """Admit `cost` units for `identity` (or, with `partial`, as many as fit).

        `cache_keys` = (version key or "", entry key, lock key) rides in the same round trip."""
        if tier_hint not in _TIERS:  # it is packed into the script's arguments
            raise ValueError(f"unknown tier {tier_hint!r}")
        tkey = tier_key(self.kv, user_id) if user_id else self.kv.key("tier", "{anonymous}")
        version_key, entry_key, lock_key = cache_keys or ("", self.kv.key("none"), self.kv.key("none"))
        packed = (
            f"{tier_hint} {rule.window_seconds * 1000} {cost} {os.urandom(8).hex()} {rule.limits_arg} "
            f"{1 if partial else 0} {1 if cache_keys else 0} {lock_ms} {1 if limit else 0}"
        )
        res = await self.kv.eval(
            SCRIPT, [tkey, self.window_key(rule, identity), version_key, entry_key, lock_key], [packed]
        )
        tier, from_redis, granted, lim, remaining, reset_ms, retry_ms, version, entry, lock, now = res
        granted = int(granted)
        return Decision(
            allowed=granted >= cost or (partial and granted > 0) or cost == 0,
            tier=str(tier),
            tier_from_redis=bool(int(from_redis)),
            granted=granted,
            cost=cost,
            limit=int(lim),
            remaining=int(remaining),
            reset_seconds=math.ceil(int(reset_ms) / 1000),
            retry_after=-1 if int(retry_ms) < 0 else math.ceil(int(retry_ms) / 1000),
            now_ms=int(now),
            version=version if isinstance(version, str) else None,
            entry=entry if isinstance(entry, str) else None,
            lock=bool(int(lock)),
        )

    async def set_tier(self, user_id: str, tier: str, *, ttl: int | None = None, only_if_absent: bool = False) -> None:
        if tier not in USER_TIERS:
            raise ValueError(f"unknown tier {tier!r}")
        await self.kv.set(tier_key(self.kv, user_id), tier, ex=ttl, nx=only_if_absent)
