"""The app factory: each function is a `FunctionApp` that is both an ASGI app (uvicorn,
Cloud Run, tests) and, through `lambda_handler`, a Lambda entry point (Mangum).

    fn = FunctionApp("optimized-dashboard", settings=DashboardSettings)

    @fn.get("/", auth="required", query=DashboardQuery)
    async def dashboard(ctx: RequestContext) -> dict: ...

    app = fn                   # ASGI
    handler = fn.lambda_handler

Routes are matched below `/functions/v1/<name>` (the path `supabase.functions.invoke()`
uses) and also at the root, so the same code serves a Function URL, a CDN path and the
local server. The middleware stack is composed once per cold start, outermost first:

1. observability: request id, one JSON log line, metrics, last-resort 500 envelope, Sentry
2. origin verification, behind a CDN (`shared.origin`): no CDN secret header, no service
3. CORS: preflight answered before anything else
4. per route, in `shared.pipeline`: body cap -> auth -> rate limit -> body -> edge cache
   -> handler (nothing reads the body before the caller is authenticated and admitted)
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path

from shared import errors
from shared.context import RequestContext
from shared.emf import EMF
from shared.envelope import JSONResponse, error_response, success_body
from shared.observability import VERSION, json_log, metrics, new_request_id, sentry
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.cache import CachePolicy
    from shared.ratelimit import RateRule
    from shared.services import Services

AuthMode = Literal["public", "optional", "required"]
Endpoint = Callable[[RequestContext], Awaitable[Any]]

PREFIX = "/functions/v1/"


@dataclass(slots=True)
class RouteSpec:
    method: str
    path: str
    endpoint: Endpoint
    name: str
    auth: AuthMode = "required"
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    summary: str = ""
    status_code: int = 200
    #: raw routes read the body themselves (multipart uploads, signed webhooks)
    raw_body: bool = False
    #: the body cap in bytes, applied before the body is read: a larger declared
    #: Content-Length is refused at once, a streamed body when it passes the cap. None: 64 KiB
    #: (`shared.inputs.DEFAULT_MAX_BODY`) for a JSON body; a raw route without one caps the
    #: body in its own reader, whose limit comes from its settings (uploads, webhooks)
    max_body: int | None = None
    rate: RateRule | None = None
    cache: CachePolicy | None = None
    #: what the route does when Redis is unreachable: serve ("open") or 503 ("closed")
    redis_failure: Literal["open", "closed"] = "open"
    tags: tuple[str, ...] = ()
    regex: re.Pattern[str] = field(init=False)
    param_convertors: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.regex, _, self.param_convertors = compile_path(self.path)


class FunctionApp:
    def __init__(
        self,
        name: str,
        *,
        settings: type[Settings],
        description: str = "",
        services: Services | None = None,
        settings_values: Settings | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.settings_cls = settings
        self.routes: list[RouteSpec] = []
        #: (method, path) -> route, for matches of routes without path parameters
        self._static_matches: dict[tuple[str, str], RouteSpec] = {}
        self.base = PREFIX + name
        self._settings = settings_values
        self._services = services
        self._stack: Callable[..., Awaitable[None]] | None = None
        self._pipeline: Any = None
        self._mangum: Any = None
        self._scheduled: Callable[[Any], Awaitable[dict[str, Any]]] | None = None
        self._gauges: list[Callable[[Any], Awaitable[dict[str, float]]]] = []
        self._initialised = False
        #: the KV whose first request's calls get the cold deadline (set by `warm`)
        self._kv_cold: Any = None
        #: the services the function needs (its deep health checks them; init connects to
        #: Postgres and Redis among them): set by `shared.health.add_health_route`
        self.dependencies: tuple[str, ...] = ()
        #: the function's package (`functions.upload_media`): what a server imports at start-up
        self.package = sys._getframe(1).f_globals.get("__package__") or ""
        self.emf = EMF(name)

    # -- registration -------------------------------------------------------------------

    def route(self, method: str, path: str, **opts: Any) -> Callable[[Endpoint], Endpoint]:
        def register(fn: Endpoint) -> Endpoint:
            self.routes.append(
                RouteSpec(method=method.upper(), path=path, endpoint=fn, name=opts.pop("name", fn.__name__), **opts)
            )
            self._static_matches.clear()
            return fn

        return register

    def get(self, path: str, **opts: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("GET", path, **opts)

    def post(self, path: str, **opts: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("POST", path, **opts)

    def delete(self, path: str, **opts: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("DELETE", path, **opts)

    # -- configuration (explicit argument over environment over default) ---------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = self.settings_cls.load()
        return self._settings

    @property
    def services(self) -> Services:
        if self._services is None:
            from shared.services import Services

            self._services = Services(self.settings)
        return self._services

    def configure(self, *, settings: Settings | None = None, services: Services | None = None) -> FunctionApp:
        """Use these settings / services from now on (tests, the local server)."""
        if settings is not None:
            self._settings = settings
        if services is not None:
            self._services = services
        self._stack = None
        self._pipeline = None
        self._end_cold_start()  # the old services' Redis leaves its cold deadline too
        return self

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._stack is None:
            self._stack = self._build_stack()
        if self._kv_cold is None or scope["type"] != "http":
            await self._stack(scope, receive, send)
            return
        try:
            await self._stack(scope, receive, send)
        finally:
            self._end_cold_start()

    def _end_cold_start(self) -> None:
        """The first request (or scheduled run) is over: from now on REDIS_TIMEOUT_MS alone
        governs Redis calls."""
        kv, self._kv_cold = self._kv_cold, None
        if kv is not None:
            kv.warmed()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        # a container (Cloud Run) prepares and connects before it reports started: its
        # startup probe waits, and no request pays for an import or a connection
        await lifespan(receive, send, [self])

    async def start(self) -> None:
        """A server's start-up (the ASGI lifespan), before its first request: in worker
        threads, import what the function imports lazily (`shared.warmup`) and build what is
        slow to build (TLS contexts, boto3's client); then `warm` (connections, keys).
        Lambda runs `warm` alone at init: there one request at a time pays a lazy import."""
        from shared import warmup

        if self.package:
            # not what this deployment cannot reach: storage without the dependency (boto3 is
            # then only the secret store's, read at init), Sentry without a DSN
            skip = {"shared.storage", "boto3"} if "storage" not in self.dependencies else set()
            if not getattr(self.settings, "sentry_dsn", None):
                skip.add("sentry_sdk")
            await asyncio.to_thread(warmup.import_everything, self.package, frozenset(skip))
        await self.services.start(self.dependencies)
        await self.warm()

    async def aclose(self) -> None:
        """Shutdown: the last metrics, then the connections."""
        self.emf.flush()
        if self._services is not None:
            await self._services.aclose()

    def _build_stack(self) -> Callable[..., Awaitable[None]]:
        from shared import observability
        from shared.cors import CORSMiddleware
        from shared.pipeline import Pipeline

        observability.configure(self.settings)
        self.emf.configure(self.settings)
        self._pipeline = Pipeline(self.settings, self.services)
        inner: Any = self._dispatch
        inner = CORSMiddleware(inner, self.settings)
        secrets = getattr(self.settings, "origin_verify_secrets", ())
        if secrets:
            from shared.origin import OriginVerificationMiddleware

            inner = OriginVerificationMiddleware(inner, self.settings.origin_verify_header, secrets)  # type: ignore[attr-defined]
        return ObservabilityMiddleware(inner, self.name, self.emf)

    # -- init: what a cold start does before the first request -----------------------------

    #: how long init may spend opening connections before it lets requests in anyway
    WARM_TIMEOUT_S = 5.0

    async def warm(self) -> dict[str, str]:
        """Open what the first request would otherwise open: the middleware stack, a
        connection to each service this function checks in its deep health (Postgres,
        Redis/Upstash), and the auth signing keys. A service that cannot be reached is
        logged, not fatal: the first request then meets it under the route's own policy.
        Once Redis answered, the first request's Redis calls get REDIS_COLD_TIMEOUT_MS
        (`KV.cold_start`): REDIS_TIMEOUT_MS is sized for warm calls. Returns each service's
        state, as logged: "up" or "down: <code>"."""
        if self._stack is None:
            self._stack = self._build_stack()
        from shared.emf import warm as warm_emf

        warm_emf()
        started = time.perf_counter()
        # at once, not one after the other: on Lambda each is a TLS handshake and a round
        # trip or more to another service, and init waits for the slowest only
        checks = {name: self._open(name) for name in self.dependencies if name in ("database", "redis")}
        if any(r.auth != "public" for r in self.routes) and getattr(self.settings, "jwks_url", None):
            checks["auth"] = self._open("auth")
        opened = dict(zip(checks, await asyncio.gather(*checks.values())))
        json_log.log("info", "init", function=self.name, version=VERSION, services=opened,
                     ms=round((time.perf_counter() - started) * 1000, 2))
        return opened

    async def _open(self, name: str) -> str:
        """Open one service for `warm`; "up", or "down: <code>" (reported, not raised: the
        first request meets the service under the route's own policy)."""
        try:
            async with asyncio.timeout(self.WARM_TIMEOUT_S):
                if name == "database":
                    await self.services.db.fetch("select 1 as ok", service=True)
                elif name == "redis":
                    kv = self.services.kv
                    await kv.execute("PING", timeout=self.WARM_TIMEOUT_S)
                    # the first request's calls still run code for the first time in this
                    # process: they get the cold deadline (`shared.kv`)
                    kv.cold_start(getattr(self.settings, "redis_cold_timeout_ms", 1000) / 1000)
                    self._kv_cold = kv
                elif name == "auth":
                    # the signing keys (and the JWT and crypto imports) before the first token
                    await self.services.verifier.jwks.get("")
                    if not self.services.verifier.jwks.keys:
                        return "down: no keys"
            return "up"
        except (Exception, TimeoutError) as exc:  # noqa: BLE001 - reported, the request decides
            return f"down: {getattr(exc, 'code', type(exc).__name__)}"

    def _lambda_init(self) -> None:
        """Lambda's init phase (the handler module's import): settings (secrets included),
        Sentry with its Lambda integration, then connections, on the event loop Mangum
        will run every invocation on, so they are reused."""
        self._initialised = True
        if self._stack is None:
            self._stack = self._build_stack()  # the settings configure logging, Sentry, EMF
        sentry.init()
        _event_loop().run_until_complete(self.warm())
        self._lambda_adapter()  # its import is init's, not the first request's

    def scheduled(self, fn: Callable[[Any], Awaitable[dict[str, Any]]]) -> Callable[[Any], Awaitable[dict[str, Any]]]:
        """Register the coroutine a scheduled invocation runs. It gets the services. On
        Lambda an EventBridge rule invokes the function with a `Scheduled Event`; elsewhere
        (Cloud Run) a scheduler calls `POST /internal/scheduled` with the shared secret
        `SCHEDULER_SECRET` in `X-Scheduler-Secret` (the route answers 404 when no secret is
        configured, so it is dark on Lambda)."""
        self._scheduled = fn
        self.route("POST", "/internal/scheduled", auth="public", raw_body=True, max_body=1024, rate=None,
                   name="scheduled", summary="Run the scheduled work now (the scheduler's call; shared secret)",
                   tags=("internal",))(self._scheduled_route)
        return fn

    async def _scheduled_route(self, ctx: RequestContext) -> dict[str, Any]:
        import hmac

        secret = getattr(ctx.settings, "scheduler_secret", None)
        if not secret:
            raise errors.NotFound(f"no route for POST {self.local_path(ctx.request.url.path)}", code="ROUTE_NOT_FOUND")
        given = ctx.headers.get("x-scheduler-secret", "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            raise errors.Unauthenticated("the scheduler secret does not match", code="SCHEDULER_SECRET_MISMATCH")
        return await self.run_scheduled()

    async def run_scheduled(self) -> dict[str, Any]:
        """The scheduled work, then the registered gauges; the report's numbers and the
        gauges become metrics (`scheduled.<field>`, the gauge names)."""
        assert self._scheduled is not None
        result = await self._scheduled(self.services)
        for measure in self._gauges:
            try:
                for name, value in (await measure(self.services)).items():
                    metrics.incr(name, value)
            except Exception as exc:  # noqa: BLE001 - a failed gauge must not fail the run
                json_log.log("error", "gauge failed", function=self.name, error=repr(exc))
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.incr(f"scheduled.{key}", value)
        return result

    def gauge(self, fn: Callable[[Any], Awaitable[dict[str, float]]]) -> Callable[[Any], Awaitable[dict[str, float]]]:
        """Register a coroutine that measures a backlog (names -> values) after each
        scheduled run; the values become metrics (`shared.emf`) that alarms watch."""
        self._gauges.append(fn)
        return fn

    @property
    def lambda_handler(self) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
        """The Lambda entry point. handler.py takes it at import, which on Lambda is the
        init phase: taking it there (AWS_LAMBDA_FUNCTION_NAME set) runs `_lambda_init`."""
        if not self._initialised and os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
            self._lambda_init()
        return self._invoke

    def _invoke(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        try:
            if event.get("detail-type") == "Scheduled Event" and event.get("source") == "aws.events":
                return self._run_scheduled()
            return self._lambda_adapter()(event, context)  # type: ignore[no-any-return]
        finally:
            # before the runtime may freeze the process: this invocation's metrics and errors
            self.emf.flush()
            sentry.flush()

    def _lambda_adapter(self) -> Any:
        """Mangum: a Lambda event in, the ASGI app run, a Lambda response out."""
        if self._mangum is None:
            from mangum import Mangum

            self._mangum = Mangum(self, lifespan="off")
        return self._mangum

    def _run_scheduled(self) -> dict[str, Any]:
        if self._scheduled is None:
            return {"ok": False, "error": "this function has no scheduled work"}
        try:
            return _event_loop().run_until_complete(self.run_scheduled())
        finally:
            self._end_cold_start()

    # -- routing ---------------------------------------------------------------------------

    def local_path(self, path: str) -> str:
        if path.startswith(self.base):
            path = path[len(self.base) :]
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")
        return path or "/"

    def match(self, method: str, path: str) -> tuple[RouteSpec | None, dict[str, Any], list[str]]:
        static = self._static_matches.get((method, path))
        if static is not None:
            return static, {}, []
        allowed: list[str] = []
        for route in self.routes:
            m = route.regex.match(path)
            if not m:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                if not route.param_convertors:
                    # a route without parameters matches one path only: remember it (the
                    # table is as small as the route list)
                    self._static_matches[(method, path)] = route
                    return route, {}, allowed
                params = {k: route.param_convertors[k].convert(v) for k, v in m.groupdict().items()}
                return route, params, allowed
            allowed.append(route.method)
        return None, {}, allowed

    async def _dispatch(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        request_id: str = scope["state"]["request_id"]
        path = self.local_path(scope["path"])
        route, params, allowed = self.match(request.method, path)
        if route is None:
            if allowed:
                exc: errors.AppError = errors.MethodNotAllowed(
                    f"{request.method} is not allowed here", headers={"Allow": ", ".join(sorted(set(allowed)))}
                )
            else:
                exc = errors.NotFound(f"no route for {request.method} {path}", code="ROUTE_NOT_FOUND")
            response: Response = error_response(exc, request_id)
        else:
            scope["state"]["route"] = route.name
            response = await self._run_route(route, request, request_id, params)
        # raw header edits: this runs on every response, so no MutableHeaders scans twice
        raw = response.raw_headers
        if not any(k == b"cache-control" for k, _ in raw):
            raw.append((b"cache-control", b"private, no-store"))
        raw.append((b"x-request-id", request_id.encode()))
        scope["state"]["status"] = response.status_code
        await response(scope, receive, send)

    async def _run_route(
        self, route: RouteSpec, request: Request, request_id: str, params: dict[str, Any]
    ) -> Response:
        ctx = RequestContext(
            request=request,
            request_id=request_id,
            services=self.services,
            settings=self.settings,
            route_name=f"{self.name}.{route.name}",
            path_params={k: str(v) for k, v in params.items()},
        )
        try:
            return await self._pipeline.run(ctx, route, lambda: self._call_endpoint(ctx, route))
        except errors.AppError as exc:
            if isinstance(exc, errors.ServiceUnavailable):
                metrics.incr("errors.unavailable")
            resp = error_response(exc, request_id)
            for k, v in ctx.response_headers.items():
                resp.headers.setdefault(k, v)
            return resp

    async def _call_endpoint(self, ctx: RequestContext, route: RouteSpec) -> Response:
        result = await route.endpoint(ctx)
        if isinstance(result, Response):
            for k, v in ctx.response_headers.items():
                result.headers.setdefault(k, v)
            return result
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        ctx.state["result"] = result  # the edge cache stores the data, not the bytes
        return JSONResponse(
            success_body(result, ctx.metadata), status_code=route.status_code, headers=ctx.response_headers
        )


async def lifespan(receive: Any, send: Any, apps: Any) -> None:
    """An ASGI lifespan for one or more function apps: at startup each app's `start()`; a
    failure there fails the start-up with its message (a malformed setting names its key).
    At shutdown each app's `aclose()`, none stopping the others."""
    apps = list(apps)
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await asyncio.gather(*(app.start() for app in apps))
            except Exception as exc:  # noqa: BLE001 - reported to the server, which stops
                await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            for app in apps:
                try:
                    await app.aclose()
                except Exception:  # noqa: BLE001 - shutting down anyway
                    pass
            await send({"type": "lifespan.shutdown.complete"})
            return


class ObservabilityMiddleware:
    """Outermost layer: request id, timing, one log line, metrics, and a 500 envelope for
    anything that escaped the route (it never leaks a traceback to the caller).

    The log line carries the function's version, `cold_start` (true on the first request of
    the process) and both request ids: ours (`request_id`, also the `x-request-id` answer
    header) and, on Lambda, the invocation's (`lambda_request_id`, in Lambda's own logs)."""

    def __init__(self, app: Callable[..., Awaitable[None]], function: str, emf: EMF | None = None) -> None:
        self.app = app
        self.function = function
        self.emf = emf
        self.cold = True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        upstream = None
        for k, v in scope.get("headers", ()):
            if k == b"x-request-id" or (k == b"x-amz-cf-id" and upstream is None):
                upstream = v.decode("latin-1")
        request_id = new_request_id(upstream)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # the dispatcher records the status it is about to send (no send wrapper on the hot
        # path); anything that escapes before that is answered here
        state["status"] = None
        context = scope.get("aws.context")  # Mangum passes the Lambda context
        lambda_request_id = getattr(context, "aws_request_id", None)
        cold, self.cold = self.cold, False
        try:
            await self.app(scope, receive, send)
        except Exception as exc:  # last resort: the route layer maps every known error
            sentry.capture(exc, function=self.function, request_id=request_id)
            json_log.log("error", "unhandled", function=self.function, request_id=request_id,
                         lambda_request_id=lambda_request_id, version=VERSION, error=repr(exc), at=_where(exc))
            if state["status"] is None:
                resp = error_response(errors.AppError("internal error"), request_id)
                resp.headers["x-request-id"] = request_id
                state["status"] = 500
                await resp(scope, receive, send)
        finally:
            status = state["status"] or 500
            ms = round((time.perf_counter() - started) * 1000, 2)
            metrics.observe(status, ms)
            if json_log.enabled:
                json_log.log(
                    "info",
                    "request",
                    function=self.function,
                    route=state.get("route"),
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status,
                    ms=ms,
                    request_id=request_id,
                    lambda_request_id=lambda_request_id,
                    cold_start=cold,
                    version=VERSION,
                    user=state.get("user_id"),
                )
            if self.emf is not None and lambda_request_id is None:
                self.emf.tick()  # long-lived processes; Lambda flushes per invocation


def _event_loop() -> asyncio.AbstractEventLoop:
    """The loop every invocation runs on: the current one (Mangum runs on it too, so
    connections opened at init are reused), or a new one made current."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return asyncio.get_event_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        return loop


def _where(exc: BaseException) -> str:
    """file:line:function of the innermost frame that raised (the log line says where a 500
    came from without a traceback)."""
    import os
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}"
