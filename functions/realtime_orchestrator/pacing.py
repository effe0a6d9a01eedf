"""How fast each provider may be called, shared by every drainer through Redis: a token bucket
whose rate adapts to the provider's 429s, with a growing, jittered pause after each.

The limit this is built for is Supabase Realtime's (tenants/batch_broadcast.ex
`check_rate_limit`): a broadcast batch is refused when the project's message average over
the last 60 s plus the batch's size exceeds the plan (Free 100/s, Pro 500/s), and other
clients of the project count too. So:

- the rate starts at the plan's (`ceiling`) and grows back toward it additively, by 0.05 %
  of the plan per second spent sending, so it stays near what the provider allows;
- a 429 cuts it to what we actually sent over the last 60 s (the provider's window; our own
  count), less 3 %, but never below half the current rate and at most once per 5 s, and
  pauses every drainer: THROTTLE_BASE_SECONDS, doubling, jittered, up to the configured
  ceiling, or the provider's Retry-After / documented minimum if longer;
- a batch holds at most `batch_seconds` of the current rate (Realtime counts the batch on
  top of the average: a small batch wastes little headroom), within [1, max_batch].

With a `window` (Realtime: its 60 s average) the rate bounds what is granted over the window
rather than each second: grants, less the tokens handed back unused, are counted in 1 s
slots (the oldest one pro rata), and nothing is granted past `rate x window`. Within that the
bucket refills faster than the rate, by a tenth of the window's room a second, up to the
ceiling: a pause or a slow spell leaves room in the provider's average, and it is caught up
instead of lost for good (messages that arrive at the remaining rate could never catch up
otherwise). The pause after a 429 is at least one provider tick (5 s, jittered), since the
provider's average changes only then, and the rate grows again right after a cut (the window
bounds the overshoot the old 60 s hold guarded against). Without a window (FCM, APNs) the
rate is a plain token bucket's, counted in 5 s slots, and holds for 60 s after a cut.

The constants were chosen with a simulation of Realtime's rate counter (the stand-in's: 5 s
ticks, 12 buckets) at half the Free plan used by others: test_pacing.py's deterministic one
(two drainers, messages arriving at the remaining 50/s) holds 49.4/s in its steady state with
0.05 % of requests refused; `python -m bench.orchestrator --free-plan` measures the real thing.

    pacer = Pacer(kv, "realtime", ceiling=100, max_batch=100, backoff=Backoff(1, 60), window=60, min_pause=5)
    grant = await pacer.acquire(now, want=500)      # up to `granted` may go now, in `batch`es
    grant = await pacer.acquire(now, want=0, sent=40, throttled=True)  # report what happened
    await pacer.acquire(now, 0, sent=38, unused=2, granted_at=grant.at)  # and what went unused
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.kv import KV, KVUnavailable, Script
from shared.resilience import Backoff

#: additive increase: a fraction of the plan's rate per second spent sending
INCREASE = 0.0005
#: on a 429, the rate goes 3 % under what we sent in the provider's 60 s window ...
MARGIN = 0.03
#: ... at most once per this many seconds (one provider tick: later 429s are the same news)
CUT_COOLDOWN = 5.0
#: ... and, without a window, the rate holds for this long after a cut (the provider's window)
HOLD_AFTER_CUT = 60.0
#: Realtime's events average: 12 ticks of 5 s (tenants.ex `events_per_second_rate`); it
#: changes only at a tick, so a pause shorter than one learns nothing new
REALTIME_WINDOW = 60
REALTIME_TICK = 5.0
#: with a window, its room (what a pause or a slow spell left unused) is caught up on top of
#: the rate, room / CATCH_UP a second (up to the ceiling)
CATCH_UP = 10.0
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
local hold, window, min_pause = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local catch_up = tonumber(ARGV[18])
local granted_at = tonumber(ARGV[19])

local rate = math.min(st.rate or ceiling, ceiling)
local ts = st.ts or now
local pause_until = st.pause or 0
local streak = st.streak or 0
local cut = st.cut or -1e18
local changed = {}

-- what was sent recently, in slots: 12 of 5 s (sent, as reported) for the plain bucket;
-- window + 1 of 1 s (granted, less what came back unused) for the window
local nslots, span = 12, 5
if window > 0 then nslots, span = window + 1, 1 end
local epoch = math.floor(now / span)
local function slot(e)
  local i = e % nslots
  if st['e' .. i] == e then return st['b' .. i] end
  return 0
end
local function add(n, e)
  local i = e % nslots
  if st['e' .. i] ~= e then
    if e < epoch then return end  -- that second has left the window
    st['e' .. i] = e; st['b' .. i] = 0
  end
  st['b' .. i] = math.max(0, st['b' .. i] + n)
  changed[#changed + 1] = i
end
local function recent()
  local total = 0
  for e = epoch - nslots + 2, epoch do total = total + slot(e) end
  local oldest = slot(epoch - nslots + 1)
  -- with a window, its oldest second is partly out of it: the part still in, pro rata
  if window > 0 then oldest = oldest * (1 - (now / span - epoch)) end
  return total + oldest
end

local tokens = st.tokens or math.max(1, rate)  -- a first second's worth at once

if sent > 0 then
  if window == 0 then add(sent, epoch) end
  streak = 0
  if now - cut >= hold then rate = math.min(ceiling, rate + increase * ceiling * sent / rate) end
end
if unused > 0 then
  tokens = tokens + unused
  if window > 0 then add(-unused, math.min(epoch, math.floor(granted_at / span))) end
end
if throttled then
  streak = streak + 1
  if now - cut >= cooldown then
    local mine = recent() / ((window > 0) and window or 60)
    rate = math.max(floor_rate, math.min(rate, math.max(mine, rate / 2)) * (1 - margin))
    cut = now
  end
  local p = pauses[math.min(streak, #pauses)]
  if min_pause > p then p = min_pause end
  if floor_wait > p then p = floor_wait end
  pause_until = now + p
  tokens = 0
end
local room = 1e18
local refill = rate
if window > 0 then
  -- the window's room (a gap a pause or a slow spell left) is caught up within `catch_up` s
  room = math.max(0, rate * window - recent())
  refill = math.min(ceiling, rate + room / catch_up)
end

local batch = math.max(1, math.min(max_batch, math.floor(rate * batch_s)))
local burst = math.max(batch, refill)
if now > ts then tokens = math.min(burst, tokens + refill * (now - ts)); ts = now end
local granted, wait = 0, 0
if now < pause_until then
  wait = pause_until - now
else
  granted = math.max(0, math.min(want, math.floor(math.min(tokens, room) + 1e-6)))  -- rounding: 99.9999999 are 100
  tokens = tokens - granted
  if granted < want then
    local need = math.min(want - granted, batch)
    wait = math.max(0, need - tokens) / refill
    if window > 0 and need > room - granted then
      -- until enough of the window's oldest seconds have rolled out
      local freed, short = 0, need - (room - granted)
      for e = epoch - nslots + 1, epoch do
        freed = freed + slot(e)
        if freed >= short then wait = math.max(wait, (e + nslots) * span - now); break end
      end
      if freed < short then wait = math.max(wait, 1) end
    end
  end
  if granted > 0 and window > 0 then add(granted, epoch) end
end

local out = {'rate', rate, 'tokens', tokens, 'ts', ts, 'pause', pause_until, 'streak', streak, 'cut', cut}
for _, i in ipairs(changed) do
  out[#out + 1] = 'e' .. i; out[#out + 1] = st['e' .. i]
  out[#out + 1] = 'b' .. i; out[#out + 1] = st['b' .. i]
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
    #: when it was granted (report its unused tokens with `granted_at=at`)
    at: float = 0.0


class Pacer:
    def __init__(
        self, kv: KV, provider: str, *, ceiling: float, backoff: Backoff, max_batch: int = 1,
        batch_seconds: float = 1.0, floor: float = 1.0, window: int = 0, min_pause: float = 0.0,
    ) -> None:
        self.kv = kv
        self.provider = provider
        self.key = kv.key("pace", provider)
        self.ceiling = ceiling
        self.backoff = backoff
        self.max_batch = max_batch
        self.batch_seconds = batch_seconds
        self.floor = min(floor, ceiling)
        #: seconds the provider averages over (whole seconds; 0: a plain token bucket)
        self.window = window
        #: the shortest pause after a 429 (jittered like the backoff), e.g. one provider tick;
        #: never past the backoff's ceiling
        self.min_pause = min(min_pause, backoff.ceiling)

    def batch_at(self, rate: float) -> int:
        return max(1, min(self.max_batch, int(rate * self.batch_seconds)))

    async def acquire(
        self, now: float, want: int, *, sent: int = 0, throttled: bool = False, unused: int = 0,
        floor_wait: float | None = None, granted_at: float | None = None,
    ) -> Grant:
        """Report what the last grant became (`sent` accepted, a provider-wide 429, tokens
        `unused`; `granted_at`: that grant's `at`) and take up to `want` for the next sends,
        in one round trip."""
        pauses = " ".join(f"{self.backoff.delay(n):.3f}" for n in range(1, PAUSE_STEPS + 1))
        try:
            granted, batch, wait, rate, streak = await self.kv.eval(SCRIPT, [self.key], [
                f"{now:.6f}", want, sent, int(throttled), unused, self.ceiling, self.floor, self.batch_seconds,
                self.max_batch, floor_wait if floor_wait is not None else -1, INCREASE, MARGIN, CUT_COOLDOWN, pauses,
                0 if self.window else HOLD_AFTER_CUT, self.window,
                f"{self.min_pause * (1 - self.backoff.jitter * random.random()):.3f}", CATCH_UP,
                f"{now if granted_at is None else granted_at:.6f}",
            ])
        except KVUnavailable:
            # no shared pace: one batch at a time, a second apart; the provider's 429s and
            # each row's own backoff still hold the rest back
            batch = self.batch_at(self.ceiling)
            if throttled:
                return Grant(0, batch, self.backoff.delay(1, floor_wait, random.random), self.ceiling)
            return Grant(min(want, batch), batch, 1.0, self.ceiling)
        return Grant(int(granted), int(batch), float(wait), float(rate), int(streak), now)
