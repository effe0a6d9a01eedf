"""The interactive API docs `edgefn dev` serves: the `edgefn openapi` document at
`/openapi.json` (its server set to where it is served, its bearer scheme saying where the
demo token comes from) and Swagger UI at `/docs`. Swagger UI's files come from the
swagger-ui-bundle-v2 package, so the page loads nothing from another host and works offline.
"""

from __future__ import annotations

import html
import json
import mimetypes
import re
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles

DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
ASSETS_PATH = "/docs/assets"
#: what the page loads from the package (it holds more: source maps, a demo page)
ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")

#: shown above the routes and in the Authorize dialog (`...` is code)
TOKEN_HINT = (
    "Click Authorize and paste the demo token that `edgefn dev` printed at start (the line "
    "`TOKEN=...`, without `Bearer`: the demo user, valid 24 h), or mint one with "
    "`edgefn token --user <uuid>`. Then Try it out on any route."
)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>edgefn functions: API docs</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<style>
  #token-hint {{ font: 14px/1.5 sans-serif; max-width: 1400px; margin: 16px auto 0; padding: 10px 20px;
                 background: #fff8e1; border: 1px solid #f0d98c; border-radius: 4px; box-sizing: border-box; }}
  #token-hint code {{ background: #f5f5f5; padding: 0 3px; }}
</style>
</head>
<body>
<div id="token-hint"><strong>Calling the routes:</strong> {hint} Server: <code>{base}</code>.</div>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
  window.ui = SwaggerUIBundle({{
    url: "{openapi}",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  }});
</script>
</body>
</html>
"""


def _as_html(text: str) -> str:
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))


def swagger_ui_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


def served_document(base: str) -> dict[str, Any]:
    """The OpenAPI document as `edgefn dev` at `base` serves it."""
    from edgefn.openapi import build

    doc = build()
    doc["servers"] = [{"url": base, "description": "this edgefn dev"}]
    doc["components"]["securitySchemes"]["bearerAuth"]["description"] = TOKEN_HINT
    return doc


class APIDocs:
    """ASGI app for `DOCS_PATH`, `OPENAPI_PATH` and the listed assets; `handles(path)` says
    which paths are its own. The document is built once, here, not on the event loop, and so
    is what the first asset would set up."""

    def __init__(self, base: str) -> None:
        body = json.dumps(served_document(base)).encode()
        page = PAGE.format(assets=ASSETS_PATH, openapi=OPENAPI_PATH, base=html.escape(base), hint=_as_html(TOKEN_HINT))
        assets = StaticFiles(directory=swagger_ui_dir())
        # what serving the first asset does once (30 ms or more): read the system's MIME
        # table, import anyio's file module (a lazy import); here, not on the event loop
        mimetypes.init()
        from anyio import open_file  # noqa: F401

        async def document(request: Request) -> Response:
            return Response(body, media_type="application/json", headers={"cache-control": "no-cache"})

        async def viewer(request: Request) -> HTMLResponse:
            return HTMLResponse(page, headers={"cache-control": "no-cache"})

        self.paths = frozenset({DOCS_PATH, OPENAPI_PATH, *(f"{ASSETS_PATH}/{name}" for name in ASSETS)})
        self.app = Router(
            routes=[
                Route(DOCS_PATH, viewer, methods=["GET", "HEAD"]),
                Route(OPENAPI_PATH, document, methods=["GET", "HEAD"]),
                Mount(ASSETS_PATH, assets),
            ]
        )

    def handles(self, path: str) -> bool:
        return path in self.paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

