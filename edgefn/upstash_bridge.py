"""A local stand-in for the Upstash REST API, in front of a real Redis.

It speaks what the upstash-redis client (1.8) sends and expects, so the REST backend and
upstash-ratelimit can be tested for real without an Upstash account:

- `POST /` with a JSON array command (`["SET", "k", "v"]`) -> `{"result": ...}`, or
  `{"error": "ERR ..."}` with status 400 when Redis rejects the command;
- `POST /pipeline` with an array of commands -> 200 and one `{"result"}` / `{"error"}`
  object per command, in order (a failed command does not stop the others);
- `POST /multi-exec`: the same, run as MULTI/EXEC; a command Redis refuses to queue
  aborts the transaction: 400 `{"error": "EXECABORT ..."}`;
- `Authorization: Bearer <token>`, compared in constant time, else 401
  `{"error": "Unauthorized"}`;
- `Upstash-Encoding: base64`: every string in the result (nested arrays too) is base64,
  except a status reply `OK`, which the client passes through undecoded; integers and nil
  stay as they are. Without the header strings are plain UTF-8;
- an `Upstash-Sync-Token` response header (the client stores it and sends it back).

Redis 7 rejects the `#!lua flags=allow-key-locking` shebang (an Upstash-only flag) that
upstash-ratelimit prepends to its scripts, so that flag is removed from EVAL and SCRIPT LOAD
bodies (the line goes when it was the only flag), and EVALSHA / SCRIPT EXISTS map the sha
the client computed over the text it sent to the sha of the script Redis holds.

Test switches: `delay_seconds` adds latency to every request; `fail = True` answers every
request with a gateway's plain-text 502. `requests` counts requests and `commands` logs the
command names of each one.

    server = BridgeServer("redis://127.0.0.1:6379/0", token="secret")
    url = server.start()          # uvicorn in a background thread, on a free port
    ...
    server.stop()

Or run it: `python -m edgefn.upstash_bridge --redis-url redis://... --token secret --port 8079`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

SHEBANG_FLAG = "allow-key-locking"


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def strip_upstash_shebang(source: str) -> str:
    """Remove the Upstash-only `allow-key-locking` flag from a script's `#!lua` line (and
    the line itself when that was its only flag); any other script is returned as is."""
    first, sep, rest = source.partition("\n")
    if not first.startswith("#!lua"):
        return source
    words = first[len("#!lua") :].split()
    flags: list[str] = []
    other: list[str] = []
    for w in words:
        if w.startswith("flags="):
            flags += [f for f in w[len("flags=") :].split(",") if f]
        else:
            other.append(w)
    if SHEBANG_FLAG not in flags:
        return source
    flags = [f for f in flags if f != SHEBANG_FLAG]
    if not flags and not other:
        return rest
    line = " ".join(["#!lua", *other, *([f"flags={','.join(flags)}"] if flags else [])])
    return line + sep + rest


def encode_result(value: Any, b64: bool) -> Any:
    """A redis-py RESP2 reply as Upstash's JSON result."""
    if isinstance(value, bytes):
        if not b64:
            return value.decode("utf-8", "replace")
        # the client leaves "OK" undecoded; b64("OK") decodes to "OK" too
        return "OK" if value == b"OK" else base64.b64encode(value).decode()
    if isinstance(value, list):
        return [encode_result(v, b64) for v in value]
    if isinstance(value, Exception):  # an error nested in an array reply
        return encode_result(_error_text(value).encode(), b64)
    return value  # int or None


def _error_text(exc: Exception) -> str:
    """Redis's own error text, code first. redis-py keeps the code apart from the message in
    some versions (`status_code`) and in the message in others (8.x: both)."""
    text, code = str(exc), getattr(exc, "status_code", None)
    if not code or text == code or text.startswith(f"{code} "):
        return text
    return f"{code} {text}"


def _arg(value: Any) -> str | int | float:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return json.dumps(value)
    return value


class CommandError(Exception):
    pass


class UpstashBridge:
    """The ASGI app. One redis-py asyncio client, created on the serving loop."""

    def __init__(self, redis_url: str, token: str) -> None:
        self.redis_url = redis_url
        self._auth = f"Bearer {token}".encode()
        self.delay_seconds = 0.0
        self.fail = False
        self.requests = 0
        self.commands: list[list[str]] = []
        self._sync = 0
        # sha of the text a client sent -> sha of the script Redis holds
        self._sha_map: dict[str, str] = {}
        self._redis: Any = None
        self.app = Starlette(
            routes=[
                Route("/", self.single, methods=["POST"]),
                Route("/pipeline", self.pipeline, methods=["POST"]),
                Route("/multi-exec", self.multi_exec, methods=["POST"]),
            ],
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @asynccontextmanager
    async def _lifespan(self, app: Any) -> Any:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # a blocking pool: under a burst, requests wait for a connection instead of failing
        # with "Too many connections" (a real Upstash endpoint queues too)
        pool = redis.BlockingConnectionPool.from_url(
            self.redis_url, protocol=2, max_connections=64, timeout=10, retry=Retry(NoBackoff(), 0)
        )
        # from_pool: the client owns the pool, so aclose() disconnects its connections
        self._redis = redis.Redis.from_pool(pool)
        self._redis.response_callbacks.clear()  # raw replies
        try:
            yield
        finally:
            await self._redis.aclose()

    # -- requests ------------------------------------------------------------------------

    async def _prologue(self, request: Request, *, many: bool) -> tuple[Any, Response | None]:
        self.requests += 1
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.fail:
            return None, PlainTextResponse("Bad Gateway", status_code=502)
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, self._auth):
            return None, self._json({"error": "Unauthorized"}, 401)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None, self._json({"error": "ERR failed to parse command"}, 400)
        commands = body if many else [body]
        if not isinstance(commands, list) or not commands or not all(
            isinstance(c, list) and c for c in commands
        ):
            return None, self._json({"error": "ERR failed to parse command"}, 400)
        commands = [[_arg(a) for a in c] for c in commands]
        self.commands.append([str(c[0]).upper() for c in commands])
        return commands, None

    def _json(self, body: Any, status: int = 200) -> Response:
        self._sync += 1
        return JSONResponse(body, status_code=status, headers={"Upstash-Sync-Token": str(self._sync)})

    def _b64(self, request: Request) -> bool:
        return request.headers.get("upstash-encoding", "").lower() == "base64"

    def _rewrite(self, cmd: list[Any]) -> tuple[list[Any], str | None]:
        """Script handling; returns the command to run and, for SCRIPT LOAD, the sha to
        answer with."""
        name = str(cmd[0]).upper()
        if name in ("EVAL", "EVAL_RO") and len(cmd) > 1 and isinstance(cmd[1], str):
            stripped = strip_upstash_shebang(cmd[1])
            if stripped != cmd[1]:
                self._sha_map[sha1(cmd[1])] = sha1(stripped)
                return [cmd[0], stripped, *cmd[2:]], None
        elif name in ("EVALSHA", "EVALSHA_RO") and len(cmd) > 1:
            return [cmd[0], self._sha_map.get(str(cmd[1]).lower(), cmd[1]), *cmd[2:]], None
        elif name == "SCRIPT" and len(cmd) > 2:
            sub = str(cmd[1]).upper()
            if sub == "LOAD" and isinstance(cmd[2], str):
                stripped = strip_upstash_shebang(cmd[2])
                if stripped != cmd[2]:
                    self._sha_map[sha1(cmd[2])] = sha1(stripped)
                    return [cmd[0], cmd[1], stripped], sha1(cmd[2])
            elif sub == "EXISTS":
                return [cmd[0], cmd[1], *(self._sha_map.get(str(s).lower(), s) for s in cmd[2:])], None
        return cmd, None

    def _answer(self, reply: Any, answer_sha: str | None, b64: bool) -> dict[str, Any]:
        import redis.exceptions as rx

        if isinstance(reply, rx.ResponseError):
            return {"error": _error_text(reply)}
        if answer_sha is not None:
            reply = answer_sha.encode()
        return {"result": encode_result(reply, b64)}

    async def single(self, request: Request) -> Response:
        import redis.exceptions as rx

        commands, refusal = await self._prologue(request, many=False)
        if refusal is not None:
            return refusal
        cmd, answer_sha = self._rewrite(commands[0])
        try:
            reply = await self._redis.execute_command(*cmd)
        except rx.ResponseError as exc:
            return self._json({"error": _error_text(exc)}, 400)
        except rx.RedisError as exc:
            return self._json({"error": f"bridge: redis unavailable: {exc}"}, 502)
        return self._json(self._answer(reply, answer_sha, self._b64(request)))

    async def pipeline(self, request: Request) -> Response:
        return await self._batch(request, transaction=False)

    async def multi_exec(self, request: Request) -> Response:
        return await self._batch(request, transaction=True)

    async def _batch(self, request: Request, *, transaction: bool) -> Response:
        import redis.exceptions as rx

        commands, refusal = await self._prologue(request, many=True)
        if refusal is not None:
            return refusal
        rewritten = [self._rewrite(c) for c in commands]
        try:
            async with self._redis.pipeline(transaction=transaction) as pipe:
                for cmd, _ in rewritten:
                    pipe.execute_command(*cmd)
                replies = await pipe.execute(raise_on_error=False)
        except rx.ResponseError as exc:  # a transaction Redis refused to queue
            return self._json({"error": "EXECABORT Transaction discarded because of previous errors."}, 400)
        except rx.RedisError as exc:
            return self._json({"error": f"bridge: redis unavailable: {exc}"}, 502)
        b64 = self._b64(request)
        return self._json([self._answer(r, sha, b64) for r, (_, sha) in zip(replies, rewritten, strict=True)])


class BridgeServer:
    """The bridge under uvicorn in a background thread."""

    def __init__(self, redis_url: str, token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = UpstashBridge(redis_url, token)
        self.token = token
        self.host = host
        self.port = port
        self.base_url = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # test switches, forwarded to the app
    @property
    def delay_seconds(self) -> float:
        return self.app.delay_seconds

    @delay_seconds.setter
    def delay_seconds(self, value: float) -> None:
        self.app.delay_seconds = value

    @property
    def fail(self) -> bool:
        return self.app.fail

    @fail.setter
    def fail(self, value: bool) -> None:
        self.app.fail = value

    def start(self, timeout: float = 10.0) -> str:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="on",
            interface="asgi3",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="upstash-bridge", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("the Upstash bridge did not start")
            time.sleep(0.01)
        self.base_url = f"http://{self.host}:{self.port}"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m edgefn.upstash_bridge", description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--token", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8079)
    a = p.parse_args(argv)
    server = BridgeServer(a.redis_url, a.token, a.host, a.port)
    print(server.start(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
