"""Exactness across processes: 300 concurrent requests from one user, spread over three
server processes sharing one Redis, against a limit of 100, admit exactly 100."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edgefn.tokens import public_jwks
from tests.conftest import ISSUER, KEY_PREFIX


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    ports = [free_port() for _ in range(3)]
    procs = [
        subprocess.Popen(
            # keep-alive longer than a slow machine's pause between warm-up and burst, so the
            # client never reuses a connection the server already closed
            [sys.executable, "-m", "uvicorn", "tests.apps.limited:app", "--port", str(p), "--log-level", "warning",
             "--timeout-keep-alive", "120"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for p in ports
    ]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        deadline = time.monotonic() + 90  # generous: a loaded CI machine starts processes slowly
        for url, proc in zip(urls, procs):
            while True:
                try:
                    if httpx.get(url + "/functions/v1/limited/nothing").status_code == 404:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


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
