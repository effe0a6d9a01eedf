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

import re
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
from shared.envelope import JSONResponse, error_response, success_body
from shared.observability import json_log, metrics, new_request_id, sentry
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
        return self

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._stack is None:
            self._stack = self._build_stack()
        await self._stack(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        await lifespan(receive, send, [self._services] if self._services is not None else [])

    def _build_stack(self) -> Callable[..., Awaitable[None]]:
        from shared import observability
        from shared.cors import CORSMiddleware
        from shared.pipeline import Pipeline

        observability.configure(self.settings)
        self._pipeline = Pipeline(self.settings, self.services)
        inner: Any = self._dispatch
        inner = CORSMiddleware(inner, self.settings)
        secrets = getattr(self.settings, "origin_verify_secrets", ())
        if secrets:
            from shared.origin import OriginVerificationMiddleware

            inner = OriginVerificationMiddleware(inner, self.settings.origin_verify_header, secrets)  # type: ignore[attr-defined]
        return ObservabilityMiddleware(inner, self.name)

    def scheduled(self, fn: Callable[[Any], Awaitable[dict[str, Any]]]) -> Callable[[Any], Awaitable[dict[str, Any]]]:
        """Register the coroutine a scheduled invocation runs (an EventBridge rule invokes
        the function with a `Scheduled Event`, not an HTTP request). It gets the services."""
        self._scheduled = fn
        return fn

    def lambda_handler(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event.get("detail-type") == "Scheduled Event" and event.get("source") == "aws.events":
            if self._scheduled is None:
                return {"ok": False, "error": "this function has no scheduled work"}
            import asyncio

            try:
                loop = asyncio.get_event_loop()
            except RuntimeError:
                loop = asyncio.new_event_loop()
                asyncio.set_event_loop(loop)
            return loop.run_until_complete(self._scheduled(self.services))
        if self._mangum is None:
            from mangum import Mangum

            self._mangum = Mangum(self, lifespan="off")
        return self._mangum(event, context)  # type: ignore[no-any-return]

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


async def lifespan(receive: Any, send: Any, services: Any) -> None:
    """An ASGI lifespan: nothing to do at startup (pools open on first use); at shutdown,
    close each of `services` (an iterable, read then), none stopping the others."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            for s in services:
                try:
                    await s.aclose()
                except Exception:  # noqa: BLE001 - shutting down anyway
                    pass
            await send({"type": "lifespan.shutdown.complete"})
            return


class ObservabilityMiddleware:
    """Outermost layer: request id, timing, one log line, and a 500 envelope for anything
    that escaped the route (it never leaks a traceback to the caller)."""

    def __init__(self, app: Callable[..., Awaitable[None]], function: str) -> None:
        self.app = app
        self.function = function

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
        try:
            await self.app(scope, receive, send)
        except Exception as exc:  # last resort: the route layer maps every known error
            sentry.capture(exc, function=self.function, request_id=request_id)
            json_log.log("error", "unhandled", function=self.function, request_id=request_id, error=repr(exc),
                         at=_where(exc))
            if state["status"] is None:
                resp = error_response(errors.AppError("internal error"), request_id)
                resp.headers["x-request-id"] = request_id
                state["status"] = 500
                await resp(scope, receive, send)
        finally:
            status = state["status"] or 500
            metrics.incr(status)
            if json_log.enabled:
                json_log.log(
                    "info",
                    "request",
                    function=self.function,
                    route=state.get("route"),
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                    request_id=request_id,
                    user=state.get("user_id"),
                )


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
