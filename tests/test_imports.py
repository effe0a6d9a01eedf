"""Cold-start hygiene: importing a function's handler must not pull in the heavy SDKs.
boto3 (~180 ms), the full `supabase` package (~350 ms) and sentry_sdk (~150 ms) are imported
lazily, where used; the database and Redis clients load on first use too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from functions import FUNCTIONS

NEVER_AT_IMPORT = ("boto3", "botocore", "supabase", "sentry_sdk", "psycopg", "psycopg_pool", "redis", "hiredis", "upstash_redis")


@pytest.mark.parametrize("route", sorted(FUNCTIONS))
def test_handler_import_does_not_load_heavy_sdks(route: str) -> None:
    code = (
        "import json, sys; import importlib; "
        f"m = importlib.import_module({FUNCTIONS[route]!r}); "
        "assert callable(m.handler) and callable(m.app); "
        f"print(json.dumps([n for n in {NEVER_AT_IMPORT!r} if n in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PATH": ""})
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"{route} imports {loaded} at cold start"
