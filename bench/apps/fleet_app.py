"""Every function in one ASGI app, each configured from the environment exactly like a
deployed function (the same settings classes, the same variables), as the system benchmark,
the fault suite and the fuzzer serve it with `uvicorn --workers N`:

    uvicorn bench.apps.fleet_app:app --workers 2

`/functions/v1/<name>...` goes to that function; `/bare` is a bare Starlette route (the
floor); `/stats` answers the worker's pid and its
Postgres and Redis round-trip counters; anything else is the functions' 404 envelope.
Services are built lazily per worker process, on the first request that needs them.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.harness import round_trips
from edgefn.dev import LocalGateway
from functions import FUNCTIONS
from shared.app import lifespan


async def _bare_endpoint(request: Request) -> JSONResponse:
    return JSONResponse({"success": True, "data": {"ok": True}})


_bare = Starlette(routes=[Route("/bare", _bare_endpoint)])


def _apps() -> dict[str, Any]:
    return {name: importlib.import_module(module).app for name, module in FUNCTIONS.items()}


def _counters(apps: dict[str, Any]) -> dict[str, int]:
    return {"pid": os.getpid(), **round_trips(apps.values())}


class FleetApp(LocalGateway):
    async def _lifespan(self, receive: Any, send: Any) -> None:
        await lifespan(receive, send, self.apps.values())

    async def _local(self, scope: dict[str, Any], receive: Any, send: Any, path: str) -> None:
        if path == "/bare":  # the floor: no middleware, no I/O, as a bare Starlette route
            await _bare(scope, receive, send)
            return
        if path == "/stats":
            body = json.dumps(_counters(self.apps)).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await super()._local(scope, receive, send, path)


app = FleetApp(_apps(), jwks={"keys": []})
