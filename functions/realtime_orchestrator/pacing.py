"""How fast each provider may be called, shared by every drainer through Redis: a token bucket
whose rate adapts to the provider's 429s, with a growing, jittered pause after each.

The limit this is built for is Supabase Realtime's (tenants/batch_broadcast.ex
`check_rate_limit`): a broadcast batch is refused when the project's message average over
the last 60 s plus the batch's size exceeds the plan (Free 100/s, Pro 500/s), and other
clients of the project count too. So:

- the rate starts at the plan's (`ceiling`) and grows back toward it additively, by 0.1 %
  of the plan per second spent sending, so it stays near what the provider allows;
- a 429 cuts it to what we actually delivered over the last 60 s (the provider's window;
  our own count, kept here in 5 s slots), less 3 %, but never below half the current rate
  and at most once per 5 s, and pauses every drainer: THROTTLE_BASE_SECONDS, doubling,
  jittered, up to the configured ceiling, or the provider's Retry-After / documented minimum
  if longer;
- after a cut the rate does not grow for one window (60 s): the pause left a gap in the
  provider's average, and growing into that gap would overshoot when it rolls out;
- a batch holds at most `batch_seconds` of the current rate (Realtime counts the batch on
  top of the average: a small batch wastes little headroom), within [1, max_batch].

The constants were chosen with a simulation of Realtime's rate counter (5 s ticks, 12
buckets) at half the Free plan used by others (steady state: 92 % of the remaining rate,
0.1 % of requests refused); `python -m bench.orchestrator --free-plan` measures the real thing.

    pacer = Pacer(kv, "realtime", ceiling=100, max_batch=100, backoff=Backoff(1, 60))
    grant = await pacer.acquire(now, want=500)      # up to `granted` may go now, in `batch`es
    grant = await pacer.acquire(now, want=0, sent=40, throttled=True)  # report what happened
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.kv import KV, KVUnavailable, Script
from shared.resilience import Backoff

#: additive increase: a fraction of the plan's rate per second spent sending
INCREASE = 0.001
#: on a 429, the rate goes 3 % under what we delivered in the provider's 60 s window ...
MARGIN = 0.03
#: ... at most once per this many seconds (one provider tick: later 429s are the same news)
CUT_COOLDOWN = 5.0
#: ... and the rate holds for this long after a cut (the provider's averaging window)
HOLD_AFTER_CUT = 60.0
#: the pauses passed to the script, for 1 .. len consecutive 429s (the last one repeats)
PAUSE_STEPS = 8

LUA = r"""
local raw = redis.call('HGETALL', KEYS[1])
local st = {}
for i = 1, #raw, 2 do st[raw[i]] = tonumber(raw[i + 1]) end
local now, want, sent = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local throttled, unused = ARGV[4] == '1', tonumber(ARGV[5])
local ceiling, floor_rate = tonumber(ARGV[6]), tonumber(ARGV[7])
local batch_s, max_batch, floor_wait = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local increase, margin, cooldown = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local pauses = {}
for p in string.gmatch(ARGV[14], '%S+') do pauses[#pauses + 1] = tonumber(p) end
local hold = tonumber(ARGV[15])

local rate = math.min(st.rate or ceiling, ceiling)
local tokens = st.tokens or math.max(1, rate)  -- a first second's worth at once
local ts = st.ts or now
local pause_until = st.pause or 0
local streak = st.streak or 0
local cut = st.cut or -1e18
local epoch = math.floor(now / 5)

if sent > 0 then
  local slot = epoch % 12
  if st['e' .. slot] ~= epoch then st['e' .. slot] = epoch; st['b' .. slot] = 0 end
  st['b' .. slot] = st['b' .. slot] + sent
  streak = 0
  if now - cut >= hold then rate = math.min(ceiling, rate + increase * ceiling * sent / rate) end
end
tokens = tokens + unused
if throttled then
  streak = streak + 1
  if now - cut >= cooldown then
    local mine = 0
    for i = 0, 11 do
      local e = st['e' .. i]
      if e and e > epoch - 12 then mine = mine + st['b' .. i] end
    end
    rate = math.max(floor_rate, math.min(rate, math.max(mine / 60, rate / 2)) * (1 - margin))
    cut = now
  end
  local p = pauses[math.min(streak, #pauses)]
  if floor_wait > p then p = floor_wait end
  pause_until = now + p
  tokens = 0
end

local batch = math.max(1, math.min(max_batch, math.floor(rate * batch_s)))
local burst = math.max(batch, rate)
if now > ts then tokens = math.min(burst, tokens + rate * (now - ts)); ts = now end
local granted, wait = 0, 0
if now < pause_until then
  wait = pause_until - now
else
  granted = math.max(0, math.min(want, math.floor(tokens + 1e-6)))  -- rounding: 99.9999999 tokens are 100
  tokens = tokens - granted
  if granted < want then wait = math.max(0, math.min(want - granted, batch) - tokens) / rate end
end

local out = {'rate', rate, 'tokens', tokens, 'ts', ts, 'pause', pause_until, 'streak', streak, 'cut', cut}
for i = 0, 11 do
  if st['e' .. i] then
    out[#out + 1] = 'e' .. i; out[#out + 1] = st['e' .. i]
    out[#out + 1] = 'b' .. i; out[#out + 1] = st['b' .. i]
  end
end
for i = 2, #out, 2 do out[i] = string.format('%.17g', out[i]) end
redis.call('HSET', KEYS[1], unpack(out))
redis.call('EXPIRE', KEYS[1], 3600)
return {granted, batch, string.format('%.6f', wait + 1e-6), string.format('%.6f', rate), streak}
"""
SCRIPT = Script(LUA)


@dataclass(frozen=True, slots=True)
class Grant:
    #: how many messages may go now
    granted: int
    #: how many per request
    batch: int
    #: seconds until more may go (a pause after a 429, or the bucket refilling)
    wait: float
    #: the current rate, messages per second
    rate: float
    #: consecutive 429s so far
    streak: int = 0


class Pacer:
    def __init__(
        self, kv: KV, provider: str, *, ceiling: float, backoff: Backoff, max_batch: int = 1,
        batch_seconds: float = 1.0, floor: float = 1.0,
    ) -> None:
        self.kv = kv
        self.provider = provider
        self.key = kv.key("pace", provider)
        self.ceiling = ceiling
        self.backoff = backoff
        self.max_batch = max_batch
        self.batch_seconds = batch_seconds
        self.floor = min(floor, ceiling)

    def batch_at(self, rate: float) -> int:
        return max(1, min(self.max_batch, int(rate * self.batch_seconds)))

    async def acquire(
        self, now: float, want: int, *, sent: int = 0, throttled: bool = False, unused: int = 0,
        floor_wait: float | None = None,
    ) -> Grant:
        """Report what the last grant became (`sent` accepted, a provider-wide 429, tokens
        `unused`) and take up to `want` for the next sends, in one round trip."""
        pauses = " ".join(f"{self.backoff.delay(n):.3f}" for n in range(1, PAUSE_STEPS + 1))
        try:
            granted, batch, wait, rate, streak = await self.kv.eval(SCRIPT, [self.key], [
                f"{now:.6f}", want, sent, int(throttled), unused, self.ceiling, self.floor, self.batch_seconds,
                self.max_batch, floor_wait if floor_wait is not None else -1, INCREASE, MARGIN, CUT_COOLDOWN, pauses,
                HOLD_AFTER_CUT,
            ])
        except KVUnavailable:
            # no shared pace: one batch at a time, a second apart; the provider's 429s and
            # each row's own backoff still hold the rest back
            batch = self.batch_at(self.ceiling)
            if throttled:
                return Grant(0, batch, self.backoff.delay(1, floor_wait, random.random), self.ceiling)
            return Grant(min(want, batch), batch, 1.0, self.ceiling)
        return Grant(int(granted), int(batch), float(wait), float(rate), int(streak))
