"""Origin verification: behind a CDN, only requests that came through it are served.

A Lambda Function URL is public, so anyone can skip CloudFront and call it directly, with
a `cloudfront-viewer-address` of their choosing (their own rate-limit identity, a place on
an IP allow-list). CloudFront adds a secret header to every request it forwards
(`OriginCustomHeaders` in `infra/cdn/cloudfront.yaml`); with `ORIGIN_VERIFY_SECRETS` set,
this layer refuses every request without it (403 `ORIGIN_NOT_VERIFIED`), before CORS,
auth or any I/O, so the client-address header the pipeline believes was set by the CDN.

Two values are accepted so the secret can be rotated without refusing traffic: add the new
value to the functions, switch CloudFront to it, then drop the old one. The comparison
(`shared.auth.secret_matches`) runs against both values every time, over SHA-256 digests,
so neither which value matched nor the secret's length shows in the time taken.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from shared import errors
from shared.auth import secret_matches
from shared.envelope import error_response


class OriginVerificationMiddleware:
    """Refuses (403) any request without the CDN's secret header. Sits just inside the
    observability layer, so refusals are logged with a request id like any other."""

    def __init__(self, app: Callable[..., Awaitable[None]], header: str, secrets: Sequence[str]) -> None:
        self.app = app
        self.header = header.lower().encode("latin-1")
        self.secrets = tuple(secrets)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            offered = None
            for k, v in scope.get("headers", ()):
                if k == self.header:
                    offered = v
                    break
            if not secret_matches(offered, self.secrets):
                state = scope["state"]
                resp = error_response(
                    errors.Forbidden("requests must come through the CDN", code="ORIGIN_NOT_VERIFIED"),
                    state["request_id"],
                )
                resp.headers["cache-control"] = "private, no-store"
                resp.headers["x-request-id"] = state["request_id"]
                state["status"] = 403
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)
