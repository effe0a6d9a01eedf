"""CORS from an allow-list in settings. Preflight is answered here, before auth, rate
limiting, Redis or the database. A `*` allow-list never carries credentials."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.responses import Response

from shared.context import header_map
from shared.envelope import JSONResponse, error_body
from shared.settings import DEFAULT_CORS_ALLOW_HEADERS, Settings

ALLOW_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
EXPOSE_HEADERS = (
    "etag, x-request-id, ratelimit-limit, ratelimit-remaining, ratelimit-reset, retry-after, "
    "x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, x-cache-status"
)


class CORSMiddleware:
    def __init__(self, app: Callable[..., Awaitable[None]], settings: Settings) -> None:
        self.app = app
        origins = tuple(getattr(settings, "cors_origins", ()) or ())
        self.allow_all = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")
        self.max_age = str(getattr(settings, "cors_max_age", 600))
        self.allow_headers = ", ".join(getattr(settings, "cors_allow_headers", DEFAULT_CORS_ALLOW_HEADERS))

    def allowed(self, origin: str) -> bool:
        return self.allow_all or origin.rstrip("/") in self.origins

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = header_map(scope)
        origin = headers.get("origin")
        if scope["method"] == "OPTIONS" and origin and "access-control-request-method" in headers:
            await self.preflight(origin, scope.get("state", {}).get("request_id"))(scope, receive, send)
            return
        if not origin:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                h.add_vary_header("Origin")
                if self.allowed(origin):
                    if self.allow_all:
                        h["Access-Control-Allow-Origin"] = "*"
                    else:
                        h["Access-Control-Allow-Origin"] = origin
                        h["Access-Control-Allow-Credentials"] = "true"
                    h["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def preflight(self, origin: str, request_id: str | None = None) -> Response:
        headers = {
            "Vary": "Origin",
            "Cache-Control": f"public, max-age={self.max_age}",
        }
        if not self.allowed(origin):
            # refused in the error envelope like every other refusal
            body = error_body("CORS_ORIGIN_NOT_ALLOWED", "this origin may not call the API", request_id)
            return JSONResponse(body, status_code=403, headers=headers)
        headers.update(
            {
                "Access-Control-Allow-Origin": "*" if self.allow_all else origin,
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": self.allow_headers,
                "Access-Control-Max-Age": self.max_age,
            }
        )
        if not self.allow_all:
            headers["Access-Control-Allow-Credentials"] = "true"
        return Response(status_code=204, headers=headers)
