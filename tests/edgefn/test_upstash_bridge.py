"""The Upstash REST bridge against the run's real Redis: the wire protocol as raw HTTP, and
the upstash-redis client talking to it in both encodings."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from upstash_redis.asyncio import Redis

from edgefn.upstash_bridge import BridgeServer, strip_upstash_shebang
from tests.conftest import KEY_PREFIX

TOKEN = secrets.token_urlsafe(24)
SHEBANG = "#!lua flags=allow-key-locking\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def bridge(redis_url: str) -> Iterator[BridgeServer]:
    server = BridgeServer(redis_url, TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def http(bridge: BridgeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bridge.base_url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c
    bridge.fail = False
    bridge.delay_seconds = 0.0


@pytest.fixture
def key() -> Any:
    return lambda: f"{KEY_PREFIX}:bridge:{uuid.uuid4().hex}"


B64 = {"Upstash-Encoding": "base64"}


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [None, "", "Bearer", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN],
)
def test_unauthorized(bridge: BridgeServer, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    for path, body in (("/", ["PING"]), ("/pipeline", [["PING"]]), ("/multi-exec", [["PING"]])):
        r = httpx.post(bridge.base_url + path, json=body, headers=headers)
        assert r.status_code == 401
        assert r.json() == {"error": "Unauthorized"}


def test_authorized(http: httpx.Client) -> None:
    r = http.post("/", json=["PING"])
    assert r.status_code == 200 and r.json() == {"result": "PONG"}


# -- single commands and encoding ----------------------------------------------------------


def test_plain_encoding(http: httpx.Client, key: Any) -> None:
    k, n, missing = key(), key(), key()
    assert http.post("/", json=["SET", k, "héllo"]).json() == {"result": "OK"}
    assert http.post("/", json=["GET", k]).json() == {"result": "héllo"}
    assert http.post("/", json=["INCRBY", n, 5]).json() == {"result": 5}  # JSON numbers as args
    assert http.post("/", json=["GET", missing]).json() == {"result": None}
    assert http.post("/", json=["MGET", k, missing, n]).json() == {"result": ["héllo", None, "5"]}


def test_base64_encoding(http: httpx.Client, key: Any) -> None:
    k, n, missing, ok = key(), key(), key(), key()
    assert http.post("/", json=["SET", k, "héllo"], headers=B64).json() == {"result": "OK"}  # status OK stays
    assert http.post("/", json=["GET", k], headers=B64).json() == {"result": b64("héllo")}
    assert http.post("/", json=["PING"], headers=B64).json() == {"result": b64("PONG")}
    assert http.post("/", json=["INCR", n], headers=B64).json() == {"result": 1}
    assert http.post("/", json=["GET", missing], headers=B64).json() == {"result": None}
    script = "return {1, 'a', {2, 'b', {}}, ARGV[1]}"
    r = http.post("/", json=["EVAL", script, 0, "z"], headers=B64)
    assert r.json() == {"result": [1, b64("a"), [2, b64("b"), []], b64("z")]}
    http.post("/", json=["SET", ok, "OK"])
    assert http.post("/", json=["GET", ok], headers=B64).json() == {"result": "OK"}  # decodes the same


def test_command_error_is_400(http: httpx.Client, key: Any) -> None:
    k = key()
    http.post("/", json=["SET", k, "text"])
    r = http.post("/", json=["INCR", k])
    assert r.status_code == 400
    assert r.json() == {"error": "ERR value is not an integer or out of range"}
    r = http.post("/", json=["EVALSHA", "0" * 40, 0])
    assert r.status_code == 400 and r.json()["error"].startswith("NOSCRIPT")
    r = http.post("/", json=["NOSUCH"])
    assert r.status_code == 400 and r.json()["error"].startswith("ERR unknown command")


@pytest.mark.parametrize("body", [b"not json", b"[]", b"{}", b'"GET"', b"[[]]"])
def test_malformed_commands(http: httpx.Client, body: bytes) -> None:
    r = http.post("/", content=body)
    assert r.status_code == 400 and "error" in r.json()


def test_only_post(http: httpx.Client) -> None:
    assert http.get("/").status_code == 405


def test_sync_token_header(http: httpx.Client) -> None:
    a = int(http.post("/", json=["PING"]).headers["upstash-sync-token"])
    b = int(http.post("/pipeline", json=[["PING"]]).headers["upstash-sync-token"])
    assert b > a


# -- pipeline and multi-exec ---------------------------------------------------------------


@pytest.mark.parametrize("encoding", [{}, B64])
def test_pipeline(http: httpx.Client, key: Any, encoding: dict[str, str]) -> None:
    a, s = key(), key()
    enc = b64 if encoding else (lambda x: x)
    r = http.post(
        "/pipeline",
        json=[["SET", a, "1"], ["SET", s, "x"], ["INCR", s], ["INCR", a], ["GET", a], ["LRANGE", a, 0, -1]],
        headers=encoding,
    )
    assert r.status_code == 200
    assert r.json() == [
        {"result": "OK"},
        {"result": "OK"},
        {"error": "ERR value is not an integer or out of range"},
        {"result": 2},
        {"result": enc("2")},
        {"error": "WRONGTYPE Operation against a key holding the wrong kind of value"},
    ]


def test_multi_exec(http: httpx.Client, key: Any) -> None:
    a, s = key(), key()
    http.post("/", json=["SET", s, "x"])
    r = http.post("/multi-exec", json=[["SET", a, "1"], ["INCR", s], ["INCR", a]], headers=B64)
    assert r.status_code == 200
    assert r.json() == [{"result": "OK"}, {"error": "ERR value is not an integer or out of range"}, {"result": 2}]

    # a command Redis will not queue discards the whole transaction
    b = key()
    r = http.post("/multi-exec", json=[["SET", b, "1"], ["NOSUCH"], ["INCR", b]])
    assert r.status_code == 400
    assert r.json()["error"].startswith("EXECABORT")
    assert http.post("/", json=["EXISTS", b]).json() == {"result": 0}


# -- scripts and the ratelimit shebang -----------------------------------------------------


def test_strip_upstash_shebang() -> None:
    body = "return 1\n"
    assert strip_upstash_shebang(SHEBANG + body) == body
    assert strip_upstash_shebang("#!lua flags=no-writes,allow-key-locking\n" + body) == "#!lua flags=no-writes\n" + body
    assert strip_upstash_shebang("#!lua name=x flags=allow-key-locking\n" + body) == "#!lua name=x\n" + body
    for unchanged in (body, "#!lua flags=no-writes\n" + body, "-- #!lua flags=allow-key-locking\n" + body):
        assert strip_upstash_shebang(unchanged) == unchanged


def test_real_redis_rejects_the_upstash_flag(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        # Redis 7 rejects the unknown flag; Redis 6 (the embedded one) any shebang at all
        with pytest.raises(redis.ResponseError, match=r"flag|near '#'"):
            client.eval(SHEBANG + "return 1", 0)
    finally:
        client.close()


def test_shebang_scripts_through_eval_evalsha_and_script_load(http: httpx.Client) -> None:
    script = SHEBANG + f"return '{uuid.uuid4().hex}'"
    client_sha = sha1(script)
    assert http.post("/", json=["SCRIPT", "EXISTS", client_sha]).json() == {"result": [0]}
    assert http.post("/", json=["EVALSHA", client_sha, 0]).json()["error"].startswith("NOSCRIPT")

    r = http.post("/", json=["EVAL", script, 0])
    assert r.status_code == 200
    expected = r.json()["result"]
    # the client's sha (of the text it sent) now runs the stripped script
    assert http.post("/", json=["EVALSHA", client_sha, 0]).json() == {"result": expected}
    assert http.post("/pipeline", json=[["EVALSHA", client_sha, 0]]).json() == [{"result": expected}]
    assert http.post("/", json=["SCRIPT", "EXISTS", client_sha, "0" * 40]).json() == {"result": [1, 0]}

    other = SHEBANG + "return 7"
    assert http.post("/", json=["SCRIPT", "LOAD", other]).json() == {"result": sha1(other)}
    assert http.post("/", json=["EVALSHA", sha1(other), 0]).json() == {"result": 7}


# -- the upstash-redis client against the bridge -------------------------------------------


@pytest.mark.parametrize("encoding", ["base64", None])
async def test_upstash_redis_client(bridge: BridgeServer, key: Any, encoding: Any) -> None:
    k, h, lst = key(), key(), key()
    # built in a thread: the client makes a TLS context of its own
    client = await asyncio.to_thread(Redis, bridge.base_url, TOKEN, rest_encoding=encoding, rest_retries=0,
                                     allow_telemetry=False)
    async with client as r:
        assert await r.ping() == "PONG"
        assert await r.set(k, "välue", ex=100) is True
        assert await r.get(k) == "välue"
        assert await r.set(k, "other", nx=True) is False
        assert 0 < await r.ttl(k) <= 100
        assert await r.hset(h, values={"a": "1", "b": "two"}) == 2
        assert await r.hgetall(h) == {"a": "1", "b": "two"}
        assert await r.rpush(lst, "x", "y") == 2
        assert await r.lrange(lst, 0, -1) == ["x", "y"]
        assert await r.eval("return {KEYS[1], ARGV[1], 3}", [k], ["arg"]) == [k, "arg", 3]
        assert await r.eval(SHEBANG + "return 5") == 5

        pipe = r.pipeline()
        pipe.incr(key())
        pipe.get(k)
        pipe.exists(k, key())
        assert await pipe.exec() == [1, "välue", 1]

        tx = r.multi()
        tx.set(k, "v2")
        tx.get(k)
        assert await tx.exec() == [True, "v2"]
        assert r._sync_token  # the bridge's sync token was stored


# -- test switches and lifecycle -----------------------------------------------------------


def test_fail_switch(http: httpx.Client, bridge: BridgeServer) -> None:
    bridge.fail = True
    for path, body in (("/", ["PING"]), ("/pipeline", [["PING"]])):
        r = http.post(path, json=body)
        assert r.status_code == 502
        assert r.headers["content-type"].startswith("text/plain")
    bridge.fail = False
    assert http.post("/", json=["PING"]).status_code == 200


def test_delay_switch_and_counters(http: httpx.Client, bridge: BridgeServer) -> None:
    start = bridge.app.requests
    bridge.delay_seconds = 0.2
    t0 = time.perf_counter()
    http.post("/pipeline", json=[["PING"], ["ECHO", "x"]])
    assert time.perf_counter() - t0 >= 0.2
    bridge.delay_seconds = 0.0
    assert bridge.app.requests == start + 1
    assert bridge.app.commands[-1] == ["PING", "ECHO"]


def test_start_and_stop_free_the_port(redis_url: str) -> None:
    server = BridgeServer(redis_url, TOKEN)
    url = server.start()
    assert server.port > 0
    assert httpx.post(url, json=["PING"], headers={"Authorization": f"Bearer {TOKEN}"}).json() == {"result": "PONG"}
    pool = server.app._redis.connection_pool
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(url, json=["PING"])
    # its Redis connections were closed, not left to the garbage collector
    assert not any(c.is_connected for c in (*pool._available_connections, *pool._in_use_connections))
