"""The shared pace (`pacing.py`) on a real Redis, over TCP and over the Upstash REST protocol,
driven with explicit times: grants stay within the rate, a 429 pauses every drainer with a
growing jittered pause under a ceiling (or the provider's floor), the rate is cut to what was
delivered and grows back, and batches follow the rate. With a window (Realtime): what was
granted over any window stays within the rate, a gap is caught up, and a simulation of
Realtime's rate counter (the stand-in's, on a simulated clock) holds the steady state."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.realtime_orchestrator.pacing import (
    CUT_COOLDOWN, HOLD_AFTER_CUT, INCREASE, MARGIN, REALTIME_TICK, REALTIME_WINDOW, Pacer,
)
from shared.kv import KV
from shared.resilience import Backoff
from tests.conftest import KEY_PREFIX


@pytest.fixture(params=["redis", "upstash"])
async def kv(request: pytest.FixtureRequest, redis_url: str, bridge: Any) -> AsyncIterator[KV]:
    from shared.kv import RedisKV, UpstashKV

    kv: KV = (RedisKV(redis_url, prefix=KEY_PREFIX, timeout=2.0) if request.param == "redis"
              else UpstashKV(bridge.base_url, bridge.token, prefix=KEY_PREFIX, timeout=2.0))
    yield kv
    await kv.aclose()


def pacer(kv: KV, **kw: Any) -> Pacer:
    kw.setdefault("ceiling", 100)
    kw.setdefault("backoff", Backoff(1.0, 30.0))
    return Pacer(kv, f"test-{uuid.uuid4().hex[:8]}", **kw)


async def test_grants_never_outrun_the_rate(kv: KV) -> None:
    p = pacer(kv, ceiling=50, max_batch=10, batch_seconds=0.1)
    t, granted = 1000.0, 0
    first = await p.acquire(t, 1000)
    assert (first.granted, first.batch) == (50, 5)  # a first second's worth at once, then the rate
    granted += first.granted
    for _ in range(200):
        t += 0.05
        granted += (await p.acquire(t, 1000)).granted
    # 10 s at 50/s, plus the first second's
    assert 540 <= granted <= 50 * 10 + 50


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(0, 300), st.booleans()), min_size=1, max_size=40))
async def test_in_any_sequence_the_pace_stays_within_its_bounds(kv: KV, steps: list[tuple[float, int, bool]]) -> None:
    """Whatever the drainers ask and however the provider answers: grants fit the bucket, the
    rate stays in [floor, ceiling], nothing is granted during a pause, and a pause never
    exceeds the backoff's ceiling."""
    p = pacer(kv, ceiling=100, max_batch=50, batch_seconds=0.05, backoff=Backoff(1.0, 8.0))
    t, paused_until = 5000.0, 0.0
    for dt, want, throttled in steps:
        t += dt
        g = await p.acquire(t, want, sent=0, throttled=throttled)
        assert 1.0 <= g.rate <= 100.0
        assert 0 <= g.granted <= want and g.granted <= max(g.batch, g.rate) + 1e-6
        assert g.batch == p.batch_at(g.rate)
        if throttled:
            assert g.granted == 0 and 0.5 - 1e-3 <= g.wait <= 8.0 + 1e-3
            paused_until = t + g.wait
        elif t < paused_until - 1e-6:
            assert g.granted == 0 and abs(g.wait - (paused_until - t)) < 1e-3


async def test_a_429_pauses_everyone_longer_each_time_up_to_the_ceiling(kv: KV) -> None:
    a = pacer(kv, backoff=Backoff(1.0, 10.0))
    b = Pacer(kv, a.provider, ceiling=100, backoff=Backoff(1.0, 10.0))  # another drainer, same provider
    t = 2000.0
    waits = []
    for _ in range(7):
        g = await a.acquire(t, 10, throttled=True)
        waits.append(g.wait)
        other = await b.acquire(t + g.wait / 2, 10)
        assert other.granted == 0 and other.wait > 0  # the pause is shared
        t += g.wait
    for n, w in enumerate(waits, start=1):
        grown = min(10.0, 2 ** (n - 1))
        assert grown / 2 - 1e-3 <= w <= grown + 1e-3
    assert max(waits) <= 10.0 + 1e-3
    g = await a.acquire(t, 10, sent=10)  # a success ends the streak
    assert g.streak == 0 and (await a.acquire(t, 1, throttled=True)).wait <= 1.0 + 1e-3


async def test_a_provider_floor_beats_the_ceiling(kv: KV) -> None:
    p = pacer(kv, backoff=Backoff(1.0, 10.0))
    g = await p.acquire(100.0, 5, throttled=True, floor_wait=60.0)  # FCM QUOTA_EXCEEDED: a minute
    assert 60.0 <= g.wait <= 60.01


async def test_a_429_cuts_the_rate_to_what_was_delivered_and_it_grows_back(kv: KV) -> None:
    p = pacer(kv, ceiling=100, max_batch=100, batch_seconds=0.05)
    t = 10_000.0
    await p.acquire(t, 0)
    for _ in range(60):  # 60 s delivering 45/s
        t += 1.0
        await p.acquire(t, 0, sent=45)
    first = await p.acquire(t, 0, throttled=True)
    assert first.rate == pytest.approx(100 / 2 * (1 - MARGIN))  # never below half at once
    again = await p.acquire(t + 1.0, 0, throttled=True)
    assert again.rate == pytest.approx(first.rate)  # within the cooldown: the same news
    for _ in range(int(CUT_COOLDOWN) + 1):  # still delivering 45/s
        t += 1.0
        await p.acquire(t, 0, sent=45)
    later = await p.acquire(t, 0, throttled=True)
    # what the last 60 s held (counted in 5 s slots: 55 to 60 s of it), less 3 %
    assert 45 * 55 / 60 * (1 - MARGIN) - 1e-6 <= later.rate <= 45 * (1 - MARGIN) + 1e-6
    assert later.batch == 2  # 0.05 s of 43.7/s
    held = []
    for _ in range(50):  # for a window after the cut the rate holds, however well it goes
        t += 1.0
        held.append((await p.acquire(t, 0, sent=int(later.rate))).rate)
    assert held == [later.rate] * 50
    t += HOLD_AFTER_CUT
    rates = []
    for _ in range(100):  # then back up by INCREASE of the plan a second spent sending
        t += 1.0
        rates.append((await p.acquire(t, 0, sent=int(later.rate))).rate)
    assert rates == sorted(rates) and rates[-1] - later.rate == pytest.approx(100 * INCREASE * 100, rel=0.15)


def windowed(kv: KV, **kw: Any) -> Pacer:
    kw.setdefault("max_batch", 100)
    kw.setdefault("batch_seconds", 0.02)
    return pacer(kv, window=REALTIME_WINDOW, min_pause=REALTIME_TICK, **kw)


async def cut_to_half(p: Pacer, t: float) -> float:
    """A 429 before anything was sent: the rate is cut to half the ceiling, less the margin."""
    g = await p.acquire(t, 0, throttled=True)
    assert g.rate == pytest.approx(p.ceiling / 2 * (1 - MARGIN))
    assert REALTIME_TICK / 2 - 1e-3 <= g.wait  # at least (half) a provider tick: it learns nothing sooner
    return g.rate


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.floats(0.01, 4.0), st.integers(0, 300), st.integers(0, 100)),
                     min_size=1, max_size=60))
async def test_with_a_window_what_was_granted_over_any_window_stays_within_the_rate(
    kv: KV, steps: list[tuple[float, int, int]]
) -> None:
    """Whatever is asked and whatever comes back unused: over any window (60 whole seconds)
    the grants, less what was handed back, stay within the rate times the window (Realtime's
    60 s average), and no grant outruns the bucket's refill at the ceiling."""
    p = windowed(kv)
    t = 7000.0
    rate = await cut_to_half(p, t)
    t += REALTIME_TICK
    kept: list[tuple[float, int]] = []
    for dt, want, give_back in steps:
        t += dt
        g = await p.acquire(t, want)
        assert g.rate == pytest.approx(rate)  # nothing reported sent: the rate stays
        back = min(give_back, g.granted)
        if back:
            await p.acquire(t, 0, unused=back, granted_at=g.at)
        kept.append((t, g.granted - back))
        # the last 59 whole seconds and this one (the second before them counts pro rata)
        in_window = sum(n for at, n in kept if int(at) > int(t) - REALTIME_WINDOW)
        assert in_window <= rate * REALTIME_WINDOW + 1e-6
        assert g.granted <= p.ceiling + 1e-6


async def test_with_a_window_a_gap_is_caught_up_faster_than_the_rate(kv: KV) -> None:
    """After a pause and an idle spell the window has room: the pace sends faster than its
    rate until the window is full (a lost spell is not lost for good), never past it."""
    p = windowed(kv)
    t = 9000.0
    rate = await cut_to_half(p, t)
    t += 30.0  # half a window with nothing sent
    per_second = []
    for _ in range(90):
        n = 0
        for _ in range(10):
            t += 0.1
            g = await p.acquire(t, 500)
            n += g.granted
        per_second.append(n)
    assert sum(per_second[:10]) >= 1.3 * rate * 10  # catching up
    assert sum(per_second[:60]) == pytest.approx(rate * REALTIME_WINDOW, abs=1)  # the window filled
    assert all(sum(per_second[i : i + 60]) <= rate * REALTIME_WINDOW + 1 for i in range(31))  # never past it
    assert sum(per_second) >= 1.15 * rate * 90  # the idle spell was partly made up: not lost for good


@pytest.fixture
async def tcp_kv(redis_url: str) -> AsyncIterator[KV]:
    from shared.kv import RedisKV

    kv = RedisKV(redis_url, prefix=KEY_PREFIX, timeout=2.0)
    yield kv
    await kv.aclose()


async def test_a_simulated_free_plan_half_used_by_others_is_used_at_93_percent(tcp_kv: KV) -> None:
    """The steady state, deterministically: Realtime's rate counter (the stand-in's: 5 s ticks,
    12 buckets, the batch counted on top) on a simulated clock, the Free plan (100/s) of which
    others use 50/s, messages arriving at the remaining 50/s, and two drainers sharing the
    pace (each a step every 0.1 s, 10 ms a request). Over the last 4 minutes of an 8-minute
    run: at least 93 % of the remaining rate delivered and fewer than 0.5 % of requests
    answered 429. (The provider's limit leaves us at most 49/s: 50 less a one-message batch.)"""
    from tests.functions.realtime_orchestrator.fakes import RateCounter

    now = [50_000.0]
    provider = RateCounter(lambda: now[0], 5.0, 12)
    provider.other_rate = 50.0
    now[0] += 60.0  # the others have filled the provider's window
    first = windowed(tcp_kv, backoff=Backoff(0.5, 60.0, jitter=0.0))  # no jitter: the same run every time
    drainers = [first, Pacer(tcp_kv, first.provider, ceiling=100, max_batch=100, batch_seconds=0.02,
                             backoff=first.backoff, window=REALTIME_WINDOW, min_pause=REALTIME_TICK)]
    start = now[0]
    backlog = delivered = requests = refused = 0
    log: list[tuple[float, int, int, int]] = []  # (time, delivered, requests, refused) so far
    next_at = [start, start + 0.05]
    arrived = 0
    while now[0] < start + 480:
        d = 0 if next_at[0] <= next_at[1] else 1
        now[0] = next_at[d]
        due = int((now[0] - start) * 50)
        backlog += due - arrived
        arrived = due
        p = drainers[d]
        g = await p.acquire(now[0], 500)
        rows = min(g.granted, backlog)
        sent = 0
        throttled = False
        for i in range(0, rows, g.batch):
            chunk = min(g.batch, rows - i)
            now[0] += 0.01
            requests += 1
            if provider.average() + chunk > 100:
                refused += 1
                throttled = True
                await p.acquire(now[0], 0, sent=sent, throttled=True)
                sent = 0
                rows = i
                break
            provider.add(chunk)
            sent += chunk
        backlog -= rows
        delivered += rows
        if sent or g.granted - rows:
            await p.acquire(now[0], 0, sent=sent, unused=g.granted - rows, granted_at=g.at)
        next_at[d] = now[0] + (0.1 if rows or throttled else min(max(g.wait, 0.1), 1.0))
        log.append((now[0], delivered, requests, refused))
    half = next(x for x in log if x[0] >= start + 240)
    end = log[-1]
    per_s = (end[1] - half[1]) / (end[0] - half[0])
    assert per_s >= 0.93 * 50, per_s
    assert end[3] - half[3] < 0.005 * (end[2] - half[2]), (end[3] - half[3], end[2] - half[2])
    assert end[3] > 0  # the plan was reached: the pace found the limit, not a quiet spell


async def test_without_redis_one_batch_goes_at_a_time(redis_url: str) -> None:
    from shared.kv import RedisKV

    dead = RedisKV("redis://127.0.0.1:1/0", prefix=KEY_PREFIX, timeout=0.2)
    try:
        p = pacer(dead, ceiling=100, max_batch=100, batch_seconds=0.05)
        g = await p.acquire(1.0, 500)
        assert (g.granted, g.batch, g.wait) == (5, 5, 1.0)
        g = await p.acquire(1.0, 0, throttled=True, floor_wait=3.0)
        assert g.granted == 0 and g.wait >= 3.0
    finally:
        await dead.aclose()
