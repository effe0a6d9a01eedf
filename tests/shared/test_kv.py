"""The key-value port, both backends (redis-py over TCP, upstash-redis over REST through the
bridge) against the run's real Redis: same replies, same errors, every call under a deadline."""

from __future__ import annotations

import asyncio

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from shared.kv import KV, KVCommandError, KVUnavailable, Script
from tests.shared.conftest import SilentServer, TcpProxy

DEADLINE = 0.5
SLACK = 0.25


def spy(kv: KV) -> list[str]:
    """Record the command name of every single command the KV sends."""
    sent: list[str] = []
    inner = kv._execute

    async def _execute(args: list[str]) -> Any:
        sent.append(args[0].upper())
        return await inner(args)

    kv._execute = _execute  # type: ignore[method-assign]
    return sent


# -- commands ------------------------------------------------------------------------------


async def test_get_set_delete(kv: KV, new_key: Callable[[], str]) -> None:
    k1, k2, missing = new_key(), new_key(), new_key()
    assert await kv.get(missing) is None
    assert await kv.set(k1, "héllo wörld ✓") is True
    assert await kv.get(k1) == "héllo wörld ✓"
    assert await kv.set(k2, "12") is True
    value = await kv.get(k2)
    assert value == "12" and isinstance(value, str)
    assert await kv.delete(k1, k2, missing) == 2
    assert await kv.delete() == 0
    assert await kv.get(k1) is None


async def test_set_ex_px_nx(kv: KV, new_key: Callable[[], str]) -> None:
    k1, k2, k3 = new_key(), new_key(), new_key()
    assert await kv.set(k1, "a", ex=100)
    assert 95 <= await kv.execute("TTL", k1) <= 100
    assert await kv.set(k2, "b", px=5000)
    assert 4000 < await kv.execute("PTTL", k2) <= 5000
    assert await kv.set(k3, "first", nx=True) is True
    assert await kv.set(k3, "second", nx=True) is False
    assert await kv.get(k3) == "first"
    assert await kv.set(k3, "third", nx=True, px=1000) is False
    assert await kv.execute("PTTL", k3) == -1


async def test_incr_and_ints(kv: KV, new_key: Callable[[], str]) -> None:
    k = new_key()
    assert await kv.incr(k) == 1
    n = await kv.incr(k)
    assert n == 2 and isinstance(n, int)
    assert await kv.execute("INCRBY", k, 40) == 42
    assert await kv.get(k) == "42"


async def test_raw_replies_are_the_same_on_both_backends(kv: KV, new_key: Callable[[], str]) -> None:
    k, h = new_key(), new_key()
    assert await kv.execute("SET", k, "v") == "OK"
    assert await kv.execute("SET", k, "w", "NX") is None
    assert await kv.execute("PING") == "PONG"
    assert await kv.ping() is True
    assert await kv.execute("EXPIRE", k, 60) == 1  # int, not bool
    assert await kv.execute("EXISTS", k) == 1
    assert await kv.execute("HSET", h, "a", 1, "b", "two") == 2
    assert sorted(await kv.execute("HGETALL", h)) == ["1", "a", "b", "two"]  # flat list
    assert (await kv.execute("MGET", k, new_key()))[1] is None
    assert await kv.execute("ECHO", "OK") == "OK"


async def test_command_error_is_not_an_outage(kv: KV, new_key: Callable[[], str]) -> None:
    k = new_key()
    await kv.set(k, "not a number")
    with pytest.raises(KVCommandError, match=r"^ERR value is not an integer") as err:
        await kv.incr(k)
    assert not isinstance(err.value, KVUnavailable)
    lst = new_key()
    await kv.execute("LPUSH", lst, "x")
    with pytest.raises(KVCommandError, match=r"^WRONGTYPE"):
        await kv.get(lst)
    with pytest.raises(KVCommandError, match=r"^ERR unknown command"):
        await kv.execute("NOSUCHCOMMAND", k)
    assert await kv.get(k) == "not a number"  # the connection is still good


async def test_pipeline_mixed_commands_and_an_error(kv: KV, new_key: Callable[[], str]) -> None:
    a, s, lst, missing = new_key(), new_key(), new_key(), new_key()
    await kv.set(s, "text")
    before = kv.round_trips
    results = await kv.pipeline(
        [
            ["SET", a, 10],
            ["INCR", a],
            ["INCR", s],  # fails
            ["GET", a],  # still runs
            ["RPUSH", lst, "x", "y"],
            ["LRANGE", lst, 0, -1],
            ["GET", missing],
            ["PEXPIRE", a, 60_000],
        ]
    )
    assert kv.round_trips == before + 1
    assert results[:2] == ["OK", 11]
    assert isinstance(results[2], KVCommandError)
    assert str(results[2]).startswith("ERR value is not an integer")
    assert results[3:] == ["11", 2, ["x", "y"], None, 1]
    assert await kv.pipeline([]) == []
    assert kv.round_trips == before + 1


# -- scripts -------------------------------------------------------------------------------

COUNTER = Script(
    """
    local n = redis.call('INCRBY', KEYS[1], ARGV[1])
    if n == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
    return {n, redis.call('PTTL', KEYS[1]), 'label:' .. ARGV[1]}
    """
)


async def test_eval_falls_back_on_noscript_then_uses_evalsha(kv: KV, new_key: Callable[[], str]) -> None:
    k = new_key()
    assert await kv.execute("SCRIPT", "FLUSH") == "OK"
    sent = spy(kv)
    before = kv.round_trips
    n, pttl, label = await kv.eval(COUNTER, [k], [3, 60_000])
    assert (n, label) == (3, "label:3") and 0 < pttl <= 60_000
    assert sent == ["EVALSHA", "EVAL"]
    assert kv.round_trips == before + 2
    assert await kv.execute("SCRIPT", "EXISTS", COUNTER.sha) == [1]

    n, _, _ = await kv.eval(COUNTER, [k], [3, 60_000])
    assert n == 6
    assert sent == ["EVALSHA", "EVAL", "SCRIPT", "EVALSHA"]
    assert kv.round_trips == before + 4


async def test_eval_through_the_bridge_is_one_request(make_kv: Callable[..., Any], bridge: Any, redis_url: str) -> None:
    """The REST round trip count, seen from the server side."""
    kv = make_kv("upstash")
    k = kv.key("kv", uuid.uuid4().hex)
    await kv.execute("SCRIPT", "FLUSH")
    start = len(bridge.app.commands)
    await kv.eval(COUNTER, [k], [1, 1000])
    await kv.eval(COUNTER, [k], [1, 1000])
    assert bridge.app.commands[start:] == [["EVALSHA"], ["EVAL"], ["EVALSHA"]]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("return 42", 42),
        ("return -7", -7),
        ("return 3.9", 3),  # Lua numbers become integers
        ("return 'text'", "text"),
        ("return {1, 'two', {3, 'four'}, {}}", [1, "two", [3, "four"], []]),
        ("return nil", None),
        ("return false", None),
        ("return true", 1),
        ("return redis.status_reply('FINE')", "FINE"),
        ("return redis.call('GET', KEYS[1])", None),
        ("return {ARGV[1], #ARGV}", ["ü", 2]),
    ],
)
async def test_script_reply_types(kv: KV, new_key: Callable[[], str], source: str, expected: Any) -> None:
    assert await kv.eval(Script(source), [new_key()], ["ü", "x"]) == expected


async def test_script_errors_are_command_errors(kv: KV, new_key: Callable[[], str]) -> None:
    with pytest.raises(KVCommandError, match=r"^MYERR something"):
        await kv.eval(Script("return redis.error_reply('MYERR something')"), [], [])
    with pytest.raises(KVCommandError, match=r"^ERR"):
        await kv.eval(Script("return redis.call('NOSUCH')"), [new_key()], [])
    with pytest.raises(KVCommandError):
        await kv.eval(Script("this is not lua"), [], [])


# -- deadlines and outages -----------------------------------------------------------------


async def test_silent_server_times_out_within_the_deadline(
    backend: str, make_kv: Callable[..., Any], silent_server: SilentServer
) -> None:
    kv = make_kv(backend, f"127.0.0.1:{silent_server.port}", timeout=DEADLINE)
    t0 = time.perf_counter()
    with pytest.raises(KVUnavailable) as err:
        await kv.get("k")
    elapsed = time.perf_counter() - t0
    assert err.value.code == "REDIS_TIMEOUT"
    assert DEADLINE - 0.05 <= elapsed < DEADLINE + SLACK
    assert silent_server.accepted >= 1
    # a per-call deadline overrides the instance's
    t0 = time.perf_counter()
    with pytest.raises(KVUnavailable):
        await kv.pipeline([["GET", "k"], ["GET", "j"]], timeout=0.1)
    assert time.perf_counter() - t0 < 0.1 + SLACK


async def test_closed_port_fails_fast(backend: str, make_kv: Callable[..., Any], closed_port: int) -> None:
    kv = make_kv(backend, f"127.0.0.1:{closed_port}", timeout=DEADLINE)
    for _ in range(2):
        t0 = time.perf_counter()
        with pytest.raises(KVUnavailable) as err:
            await kv.get("k")
        assert time.perf_counter() - t0 < 0.2
        assert err.value.code == "REDIS_UNAVAILABLE"


async def test_recovers_after_a_silent_outage_without_mixing_replies(
    backend: str, make_kv: Callable[..., Any], proxy: TcpProxy
) -> None:
    kv = make_kv(backend, proxy.endpoint, timeout=DEADLINE)
    k1, k2 = kv.key("kv", uuid.uuid4().hex), kv.key("kv", uuid.uuid4().hex)
    await kv.set(k1, "one")
    await kv.set(k2, "two")
    proxy.pause()
    t0 = time.perf_counter()
    with pytest.raises(KVUnavailable) as err:
        await kv.get(k1)
    assert err.value.code == "REDIS_TIMEOUT"
    assert time.perf_counter() - t0 < DEADLINE + SLACK
    proxy.resume()  # the held GET k1 now reaches the server; its reply must not be read as k2's
    assert await kv.get(k2) == "two"
    assert await kv.pipeline([["GET", k1], ["GET", k2]]) == ["one", "two"]


async def test_recovers_after_connections_drop(backend: str, make_kv: Callable[..., Any], proxy: TcpProxy) -> None:
    kv = make_kv(backend, proxy.endpoint, timeout=DEADLINE)
    k = kv.key("kv", uuid.uuid4().hex)
    await kv.set(k, "v")
    await proxy.close()
    t0 = time.perf_counter()
    with pytest.raises(KVUnavailable):
        await kv.get(k)
    assert time.perf_counter() - t0 < DEADLINE + SLACK
    await proxy.reopen()
    assert await kv.get(k) == "v"
    assert await kv.ping()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    backend: str, make_kv: Callable[..., Any], proxy: TcpProxy
) -> None:
    """Redis restarted while our connection sat idle: the next call opens a new connection
    instead of failing once on the dead one."""
    kv = make_kv(backend, proxy.endpoint, timeout=DEADLINE)
    k = kv.key("kv", uuid.uuid4().hex)
    await kv.set(k, "v")
    await proxy.close()
    await proxy.reopen()
    await asyncio.sleep(0.05)  # the reset reaches the idle connection
    assert await kv.get(k) == "v"


async def test_slow_bridge_times_out_then_recovers(make_kv: Callable[..., Any], bridge: Any) -> None:
    kv = make_kv("upstash", timeout=DEADLINE)
    k = kv.key("kv", uuid.uuid4().hex)
    await kv.set(k, "v")
    bridge.delay_seconds = DEADLINE + 0.3
    t0 = time.perf_counter()
    with pytest.raises(KVUnavailable) as err:
        await kv.get(k)
    assert err.value.code == "REDIS_TIMEOUT"
    assert time.perf_counter() - t0 < DEADLINE + SLACK
    bridge.delay_seconds = 0.0
    assert await kv.get(k) == "v"


async def test_failing_gateway_fails_fast_without_retry_sleeps(make_kv: Callable[..., Any], bridge: Any) -> None:
    kv = make_kv("upstash", timeout=5.0)  # the deadline is not what stops it
    bridge.fail = True
    for call in (kv.get("k"), kv.pipeline([["GET", "k"]])):
        t0 = time.perf_counter()
        with pytest.raises(KVUnavailable) as err:
            await call
        assert time.perf_counter() - t0 < 0.5
        assert err.value.code == "REDIS_UNAVAILABLE"
    bridge.fail = False
    assert await kv.get(kv.key("kv", uuid.uuid4().hex)) is None


async def test_pool_size_option(redis_url: str) -> None:
    from shared.kv import RedisKV

    kv = RedisKV(redis_url, max_connections=2, timeout=DEADLINE)
    try:
        replies = await asyncio.gather(*(kv.execute("PING") for _ in range(20)))
        assert replies == ["PONG"] * 20
        assert len(kv.client._idle) <= 2  # never more than two connections were opened
    finally:
        await kv.aclose()


async def test_wrong_token_is_an_outage_not_a_command_error(make_kv: Callable[..., Any], bridge: Any) -> None:
    from shared.kv import UpstashKV

    kv = UpstashKV(bridge.base_url, "wrong-token", timeout=DEADLINE)
    try:
        with pytest.raises(KVUnavailable):
            await kv.get("k")
    finally:
        await kv.aclose()


# -- upstash-ratelimit through the bridge --------------------------------------------------


async def test_upstash_ratelimit_sliding_window_through_the_bridge(make_kv: Callable[..., Any]) -> None:
    from upstash_ratelimit.asyncio import Ratelimit, SlidingWindow
    from upstash_redis.asyncio import Redis

    kv = make_kv("upstash")
    # Upstash's own client, built in a thread (it makes a TLS context of its own)
    client = await asyncio.to_thread(Redis, kv.url, kv.headers["Authorization"].removeprefix("Bearer "),
                                     rest_retries=0, allow_telemetry=False)
    limiter = Ratelimit(redis=client, limiter=SlidingWindow(max_requests=5, window=10), prefix=kv.key("rl"))
    who = uuid.uuid4().hex
    results = [await limiter.limit(who) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.remaining for r in results] == [4, 3, 2, 1, 0, 0]
    assert results[0].limit == 5
    await client.close()


# -- import cost ---------------------------------------------------------------------------


def test_importing_the_port_pulls_in_no_redis_client() -> None:
    code = (
        "import sys, shared.kv, shared.services\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'upstash_redis', 'httpx'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))


def test_upstash_replies_decode_as_upstash_redis_decodes_them() -> None:
    """UpstashKV speaks the REST protocol itself: its base64 decoding must agree with
    upstash-redis's own, for any nesting of strings, integers and nils."""
    import base64

    from hypothesis import given, settings
    from hypothesis import strategies as st
    from upstash_redis.http import decode

    from shared.kv import decode_base64_reply

    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
    encoded = text.map(lambda t: base64.b64encode(t.encode()).decode())
    leaf = st.one_of(encoded, st.just("OK"), st.integers(-(2**63), 2**63 - 1), st.none())
    replies = st.recursive(leaf, lambda inner: st.lists(inner, max_size=5), max_leaves=20)

    @settings(max_examples=300, deadline=None)
    @given(replies)
    def agree(raw: object) -> None:
        assert decode_base64_reply(raw) == decode(raw)  # type: ignore[arg-type]

    agree()


def test_the_rest_backend_does_not_need_upstash_redis() -> None:
    """Deployed functions speak Upstash's REST API themselves (`shared.http1`): the package
    is a test tool, and httpx is not needed for it either."""
    import subprocess
    import sys

    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('upstash_redis', 'redis', 'httpx'):\n"
        "        raise ImportError('not deployed: ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from shared.kv import UpstashKV\n"
        "UpstashKV('https://example.upstash.io', 'token')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


async def test_the_cold_deadline_holds_until_warmed(make_kv: Callable[..., Any], bridge: Any) -> None:
    """A process's first request: calls with the default deadline wait up to the cold one;
    once warmed, the warm deadline governs again. An explicit deadline is always its own."""
    kv = make_kv("upstash", timeout=DEADLINE)
    k = kv.key("kv", uuid.uuid4().hex)
    await kv.set(k, "v")
    bridge.delay_seconds = DEADLINE + 0.1
    kv.cold_start(DEADLINE + 1.0)
    assert await kv.get(k) == "v"
    with pytest.raises(KVUnavailable):
        await kv.execute("GET", k, timeout=DEADLINE)
    kv.warmed()
    with pytest.raises(KVUnavailable) as err:
        await kv.get(k)
    assert err.value.code == "REDIS_TIMEOUT"
    bridge.delay_seconds = 0.0
    assert await kv.get(k) == "v"
