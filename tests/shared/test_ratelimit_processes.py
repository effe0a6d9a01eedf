"""Exactness across processes: 300 concurrent requests from one user, spread over three
server processes sharing one Redis, against a limit of 100, admit exactly 100."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edgefn.tokens import public_jwks
from tests.conftest import ISSUER, KEY_PREFIX


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """A uvicorn process on a port it picks itself (port 0), read back from its start-up
    line: a port chosen here and handed over could be taken in between by another test
    run on the same machine, whose server would then answer for ours."""
    proc = subprocess.Popen(
        # keep-alive longer than a slow machine's pause between warm-up and burst, so the
        # client never reuses a connection the server already closed
        [sys.executable, "-m", "uvicorn", "tests.apps.limited:app", "--port", "0", "--log-level", "info",
         "--no-access-log", "--timeout-keep-alive", "120"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = []
    for raw in proc.stderr:  # until the start-up line (a dead process ends the loop)
        line = raw.decode(errors="replace")
        seen.append(line)
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
        if found:
            return proc, found.group(1)
    raise AssertionError("server did not start: " + "".join(seen))


@pytest.fixture
def servers(backend: str, redis_url: str, bridge: Any, signing_key: dict[str, Any]) -> Iterator[list[str]]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "EDGEFN_ACCESS_LOG": "0",
        "KEY_PREFIX": KEY_PREFIX,
        "JWT_ISSUER": ISSUER,
        "SUPABASE_JWKS": json.dumps(public_jwks(signing_key)),
        "REDIS_TIMEOUT_MS": "5000",
        "TEST_RULE_NAME": "procs-" + uuid.uuid4().hex[:8],
        "TEST_LIMIT": "100",
    }
    if backend == "redis":
        env["REDIS_URL"] = redis_url
    else:
        env["UPSTASH_REDIS_REST_URL"] = bridge.base_url
        env["UPSTASH_REDIS_REST_TOKEN"] = bridge.token
    procs: list[subprocess.Popen[bytes]] = []
    try:
        urls = []
        for _ in range(3):
            proc, url = start_server(env)
            procs.append(proc)
            urls.append(url)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


@pytest.mark.blocks_loop("this loop is the load generator: 300 concurrent requests to the three server processes under test")
async def test_exactly_the_limit_is_admitted_across_three_processes(servers: list[str], make_token: Any) -> None:
    token = make_token(str(uuid.uuid4()), tier="free")
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(limits=limits, timeout=60) as c:
        # warm each process (token verification, script load) with an unlimited route
        await asyncio.gather(*(c.get(u + "/functions/v1/limited/nothing") for u in servers))
        results = await asyncio.gather(
            *(c.get(servers[i % 3] + "/functions/v1/limited/hit", headers=headers) for i in range(300))
        )
    counts = Counter(r.status_code for r in results)
    assert counts == {200: 100, 429: 200}, counts
