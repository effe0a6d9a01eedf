"""The baseline the cold-start benchmark compares against: a handler written the obvious
way, importing every SDK it might need at the top of the module. `bench.cold_start` runs it
in a virtualenv of its own that holds supabase (its realtime part pins websockets below the
version uvicorn's standard extra takes, so the project's environment cannot hold both); where
that cannot be built it runs here without supabase, and says so."""

import contextlib

import boto3  # noqa: F401
import psycopg  # noqa: F401
import redis  # noqa: F401
import sentry_sdk  # noqa: F401

with contextlib.suppress(ModuleNotFoundError):
    import supabase  # noqa: F401
from mangum import Mangum
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def health(request):  # type: ignore[no-untyped-def]
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/health", health)])
handler = Mangum(app, lifespan="off")
