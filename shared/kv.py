"""A small key-value port with two backends, every call under a deadline:

- `RedisKV`: Redis over TCP through `shared.resp` (an asyncio protocol + hiredis; Cloud Run,
  local, ElastiCache);
- `UpstashKV`: Upstash's REST API (Lambda), spoken directly over HTTP/1.1 (`shared.http1`).

Both speak the same `execute(*args)` / `pipeline(commands)` / `eval(script, keys, args)`
surface and return Redis's raw RESP2 replies the same way on both: bulk and status strings
as `str` ("OK", "PONG"), integers as `int`, nil as `None`, arrays as `list` (no client-side
reshaping: no bools, dicts or floats). A command Redis rejects raises `KVCommandError` (a
bug, not an outage); a slow or unreachable Redis raises `KVUnavailable` (a 503 domain
error, code `REDIS_TIMEOUT` or `REDIS_UNAVAILABLE`), so each route can choose fail-open or
fail-closed. Neither backend retries inside a call; the next call reconnects.

The deadline is sized for a warm process. A process's first request also pays one-time
costs inside its Redis calls (code paths run for the first time, a loaded machine's
scheduling of a process that just started): until `warmed()`, calls made with the default
deadline get `cold_timeout` when that is longer (`cold_start()`; the app sets it at init,
once Redis answered, and clears it when its first request or scheduled run ends).

Scripts run by EVALSHA with a NOSCRIPT fallback to EVAL: one round trip when loaded.

The backends' libraries are imported only when a backend is built: importing this module
pulls in neither hiredis nor the HTTP client.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared import errors

if TYPE_CHECKING:
    from shared.settings import CoreSettings


class KVUnavailable(errors.ServiceUnavailable):
    code = "REDIS_UNAVAILABLE"
    default_message = "the cache is unavailable"


class KVCommandError(RuntimeError):
    """Redis answered with an error (a bug in the command or script, not an outage).

    The message is Redis's own text, error code first: `ERR ...`, `WRONGTYPE ...`,
    `NOSCRIPT ...`, the same on both backends."""


class Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


def _norm(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_norm(v) for v in value]
    return value


def _arg(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, bool):
        raise TypeError("a Redis argument cannot be a bool")
    return str(value)


class KV:
    """The port. Subclasses implement `_execute` and `_pipeline`."""

    #: convert bytes replies to str (backends whose client already decodes set False)
    normalize = True

    def __init__(self, *, timeout: float = 0.05, prefix: str = "") -> None:
        self.timeout = timeout
        self.prefix = prefix
        #: the deadline of default-deadline calls until `warmed()` (None: warm)
        self.cold_timeout: float | None = None
        #: network round trips made (benchmarks and tests read it)
        self.round_trips = 0

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts)) if self.prefix else ":".join(parts)

    async def execute(self, *args: Any, timeout: float | None = None) -> Any:
        """Run one command; returns its raw reply (see the module docstring)."""
        return await self._call(self._execute, [_arg(a) for a in args], timeout)

    async def pipeline(self, commands: Sequence[Sequence[Any]], *, timeout: float | None = None) -> list[Any]:
        """Send several commands in one round trip, not as a transaction.

        Returns one entry per command, in order. A command Redis rejects does not fail the
        others: its entry is a `KVCommandError` instance (returned, not raised) and the
        commands after it still run. Only a transport failure or the deadline fails the
        whole call (`KVUnavailable`); then some of the commands may have run. An empty
        list costs no round trip."""
        if not commands:
            return []
        return await self._call(self._pipeline, [[_arg(a) for a in c] for c in commands], timeout)  # type: ignore[no-any-return]

    def cold_start(self, timeout: float) -> None:
        """Until `warmed()`, calls with the default deadline wait up to `timeout` when it is
        longer: the first request of a process (see the module docstring)."""
        self.cold_timeout = timeout

    def warmed(self) -> None:
        """From now on every call has the warm deadline (`timeout`, REDIS_TIMEOUT_MS)."""
        self.cold_timeout = None

    async def _call(self, fn: Any, payload: Any, timeout: float | None) -> Any:
        self.round_trips += 1
        if timeout is None:
            timeout = self.timeout if self.cold_timeout is None else max(self.timeout, self.cold_timeout)
        try:
            async with asyncio.timeout(timeout):
                reply = await fn(payload)
                return _norm(reply) if self.normalize else reply
        except (KVCommandError, errors.AppError):
            raise
        except TimeoutError as exc:
            raise KVUnavailable("the cache did not answer in time", code="REDIS_TIMEOUT") from exc
        except Exception as exc:
            self._raise_for(exc)
            raise KVUnavailable(f"the cache is unavailable: {type(exc).__name__}") from exc

    async def eval(self, script: Script, keys: Sequence[str], args: Sequence[Any], **kw: Any) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args, **kw)
        except KVCommandError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args, **kw)

    # convenience
    async def get(self, key: str) -> str | None:
        return await self.execute("GET", key)  # type: ignore[no-any-return]

    async def set(self, key: str, value: str, *, ex: int | None = None, px: int | None = None, nx: bool = False) -> bool:
        """True when the value was set (False when `nx` and the key exists)."""
        args: list[Any] = ["SET", key, value]
        if ex is not None:
            args += ["EX", ex]
        if px is not None:
            args += ["PX", px]
        if nx:
            args.append("NX")
        return (await self.execute(*args)) == "OK"

    async def delete(self, *keys: str) -> int:
        return int(await self.execute("DEL", *keys)) if keys else 0

    async def incr(self, key: str) -> int:
        return int(await self.execute("INCR", key))

    async def ping(self) -> bool:
        return (await self.execute("PING")) == "PONG"

    def _raise_for(self, exc: Exception) -> None:
        """Raise `KVCommandError` for a backend's command error; anything else that
        returns is an outage (`KVUnavailable`)."""

    async def _execute(self, args: list[str]) -> Any:
        raise NotImplementedError

    async def _pipeline(self, commands: list[list[str]]) -> list[Any]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class RedisKV(KV):
    """Redis over TCP through `shared.resp` (an asyncio protocol + hiredis). RESP2 replies, like
    Upstash's. No retries inside a call; a connection whose exchange was cut short by the
    deadline is closed, so no reply is ever read twice."""

    normalize = False  # hiredis already decodes bulk strings to str

    def __init__(self, url: str, *, max_connections: int | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        from shared.resp import RespPool

        self.client = RespPool(url, max_connections=max_connections, connect_timeout=max(self.timeout * 4, 0.2))

    def _raise_for(self, exc: Exception) -> None:
        from shared.resp import RespCommandError

        if isinstance(exc, RespCommandError):
            if str(exc).startswith("READONLY"):  # a failover in progress: an outage, not a bug
                raise KVUnavailable("the cache is read-only (failover)", code="REDIS_UNAVAILABLE") from exc
            raise KVCommandError(str(exc)) from exc

    async def _execute(self, args: list[str]) -> Any:
        return await self.client.execute(args)

    async def _pipeline(self, commands: list[list[str]]) -> list[Any]:
        from shared.resp import RespCommandError

        replies = await self.client.pipeline(commands)
        return [KVCommandError(str(r)) if isinstance(r, RespCommandError) else r for r in replies]

    async def aclose(self) -> None:
        await self.client.aclose()


class _UpstashHTTPError(Exception):
    """The REST endpoint answered with a status that is not a command's answer."""


class UpstashKV(KV):
    """Upstash over its REST API (https://upstash.com/docs/redis/features/restapi), spoken
    directly: a command is a JSON array POSTed to the URL, a pipeline a JSON array of them
    POSTed to `/pipeline`; `Authorization: Bearer <token>`; replies are `{"result": ...}` or
    `{"error": "..."}`, base64-encoded as `Upstash-Encoding: base64` asks (so any bytes
    survive JSON); read-your-writes by echoing the last `Upstash-Sync-Token` seen.

    Not through the upstash-redis package: its public API reshapes replies per command,
    raises on the first error of a pipeline, reads no status code (a wrong token would look
    like a command error), retries by sleeping, and builds its own HTTPS client, with a new
    TLS context, on the event loop. Tests run this class against `edgefn/upstash_bridge.py`,
    which upstash-redis's own client is also tested against, and check its decoding against
    upstash-redis's."""

    def __init__(self, url: str, token: str, **kw: Any) -> None:
        super().__init__(**kw)
        from shared.http1 import Client

        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}", "Upstash-Encoding": "base64"}
        # no client timeout: every call runs under the KV deadline. Not httpx: a cold start
        # would pay ~55 ms of CPU for its import and first request (`shared.http1`)
        self.client = Client()

    async def _post(self, path: str, body: Any) -> Any:
        r = await self.client.post(self.url + path, headers=self.headers, json=body)
        sync_token = r.headers.get("upstash-sync-token")
        if sync_token:
            self.headers["Upstash-Sync-Token"] = sync_token
        if r.status_code != 200 and r.status_code != 400:  # 400 carries a command error
            raise _UpstashHTTPError(f"HTTP {r.status_code}")
        try:
            return r.json()
        except ValueError as exc:
            raise _UpstashHTTPError(f"HTTP {r.status_code}: not JSON") from exc

    @staticmethod
    def _reply(obj: Any) -> Any:
        if not isinstance(obj, dict):
            raise _UpstashHTTPError("unexpected reply shape")
        if obj.get("error") is not None:
            return KVCommandError(str(obj["error"]))
        return decode_base64_reply(obj.get("result"))

    async def _execute(self, args: list[str]) -> Any:
        reply = self._reply(await self._post("", args))
        if isinstance(reply, KVCommandError):
            raise reply
        return reply

    async def _pipeline(self, commands: list[list[str]]) -> list[Any]:
        replies = await self._post("/pipeline", commands)
        if not isinstance(replies, list) or len(replies) != len(commands):
            if isinstance(replies, dict) and replies.get("error") is not None:
                raise KVCommandError(str(replies["error"]))
            raise _UpstashHTTPError("unexpected pipeline reply")
        return [self._reply(r) for r in replies]

    async def aclose(self) -> None:
        await self.client.aclose()


def decode_base64_reply(raw: Any) -> Any:
    """A base64-encoded REST reply, decoded: strings are base64 (but the status "OK", which
    Upstash leaves as it is), integers and nil as they are, arrays element by element."""
    if isinstance(raw, str):
        if raw == "OK":
            return raw
        import base64

        try:
            return base64.b64decode(raw, validate=True).decode()
        except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
            raise _UpstashHTTPError("a reply that is not base64") from exc
    if isinstance(raw, list):
        return [decode_base64_reply(v) for v in raw]
    if raw is None or isinstance(raw, int):
        return raw
    raise _UpstashHTTPError(f"unexpected reply type {type(raw).__name__}")


def kv_from_settings(s: CoreSettings) -> KV:
    timeout = s.redis_timeout_ms / 1000
    if s.upstash_redis_rest_url:
        return UpstashKV(s.upstash_redis_rest_url, s.require("upstash_redis_rest_token"), timeout=timeout, prefix=s.key_prefix)
    return RedisKV(s.require("redis_url"), timeout=timeout, prefix=s.key_prefix)
