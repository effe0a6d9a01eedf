"""The dating benchmark's server: batch-swipe and recommendations in one process, configured
from the environment like deployed functions, plus /stats (the process's Postgres and Redis
round-trip counters, which the benchmark reads around each scenario)."""

from __future__ import annotations

import json
from typing import Any

from bench.harness import round_trips
from functions.batch_swipe.handler import fn as swipe_fn
from functions.recommendations.handler import fn as deck_fn

APPS = {"/functions/v1/batch-swipe": swipe_fn, "/functions/v1/recommendations": deck_fn}


def _counters() -> dict[str, int]:
    return round_trips(APPS.values())


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for fn in APPS.values():
                    if fn._services is not None:
                        await fn._services.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope.get("path", "")
    for prefix, fn in APPS.items():
        if path.startswith(prefix):
            await fn(scope, receive, send)
            return
    body = json.dumps(_counters()).encode()
    await send({"type": "http.response.start", "status": 200 if path == "/stats" else 404,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
