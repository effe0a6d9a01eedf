"""Providers that answer garbage, and a drain killed in the middle of a batch: the drain never
crashes, what it could not deliver is retried with the body's first bytes on record, and
nothing acknowledged into the outbox is lost."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.factories import create_user
from tests.functions.realtime_orchestrator.conftest import add_device, deliveries, enqueue
from tests.functions.realtime_orchestrator.fakes import ProviderFake

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """The JSON log lines written during the test (the suite runs with logging off)."""
    from shared.observability import json_log

    saved = (json_log.enabled, json_log.stream, json_log._fd)
    buf = io.StringIO()
    json_log.enabled, json_log.stream, json_log._fd = True, buf, None
    yield buf
    json_log.enabled, json_log.stream, json_log._fd = saved


GARBAGE = [
    # (whose answer, status, content type, body, what the record must show)
    ("realtime", 200, "text/html", "<html><body>Please sign in to the Wi-Fi</body></html>", "Please sign in"),
    ("realtime", 502, "text/html", "<html><head><title>502 Bad Gateway</title></head></html>", "502 Bad Gateway"),
    ("realtime", 422, "application/json", '{"errors": {"messa', '{"errors": {"messa'),
    ("realtime", 404, "text/html", "<html>Not Found: /realtime/v1</html>", "Not Found"),
    ("fcm", 200, "application/json", '{"name": "projects/edgefn-test/mess', "projects/edgefn-test/mess"),
    ("fcm", 200, "text/plain", "OK, queued", "OK, queued"),
    ("fcm", 503, "text/html", "<html>Service Unavailable</html>", "Service Unavailable"),
    ("apns", 200, "text/html", "<html>hello</html>", "<html>hello"),
    ("apns", 500, "text/plain", "Internal Server Error", "Internal Server Error"),
    ("oauth", 200, "text/html", "<html>Sign in with Google</html>", "Sign in with Google"),
]


@pytest.mark.parametrize(("provider", "status", "ctype", "body", "shown"), GARBAGE,
                         ids=[f"{g[0]}-{g[1]}-{g[2].split('/')[1]}" for g in GARBAGE])
async def test_garbage_is_a_retryable_failure_logged_with_its_first_bytes(
    database_url: str, fake: ProviderFake, make_orchestrator: Any, logs: io.StringIO,
    provider: str, status: int, ctype: str, body: str, shown: str,
) -> None:
    u = await create_user(database_url)
    platform = "apns" if provider == "apns" else "fcm"
    device_id, _ = await add_device(database_url, u, platform)
    fake.mode[provider] = ("garbage", status, ctype, body)
    event_id = await enqueue(database_url, "message.received", {"preview": "x"}, [u])
    report = await make_orchestrator().drain(budget=5)  # returns: the drain did not crash

    channel = "realtime" if provider == "realtime" else "push"
    row = next(r for r in await deliveries(database_url, event_id) if r["channel"] == channel)
    assert row["status"] == "pending" and row["attempts"] == 1, row
    assert shown in row["last_error"]
    assert report.retried >= 1 and report.dead == 0 and report.dropped == 0
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert any(shown in line.get("first_bytes", "") or shown in line.get("reason", "") for line in lines), lines
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("select active from public.device_tokens where id = %s", (device_id,))
        assert await cur.fetchone() == (True,)  # garbage never deactivates a device


# -- a drain killed mid-batch -------------------------------------------------------------------

DRAIN_PROCESS = """
import asyncio
from functions.realtime_orchestrator.drain import Orchestrator
from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
from shared.services import Services

async def main():
    settings = RealtimeOrchestratorSettings.load()
    orchestrator = Orchestrator(Services(settings), settings)
    print("draining", flush=True)
    while True:
        await orchestrator.drain(budget=30)

asyncio.run(main())
"""


async def test_a_drain_killed_mid_batch_loses_nothing(
    database_url: str, redis_url: str, fake: ProviderFake, orch_settings: dict[str, Any], client_for: Any,
    make_orchestrator: Any,
) -> None:
    from functions.realtime_orchestrator.drain import Orchestrator
    from functions.realtime_orchestrator.handler import fn
    from tests.functions.realtime_orchestrator.test_ingest import URL, signed

    users = [await create_user(database_url) for _ in range(20)]
    settings = {**orch_settings, "drain_on_ingest": False, "lease_seconds": 3, "realtime_batch_size": 10,
                "realtime_batch_seconds": 1.0, "key_prefix": f"{orch_settings['key_prefix']}:kill"}
    client = client_for(fn, **settings)
    acknowledged = []
    for i in range(5):
        for u in users:
            raw, headers = signed({"type": "like.received", "data": {"i": i}, "recipients": [u]})
            resp = await client.post(URL, content=raw, headers=headers)
            assert resp.status_code == 202, resp.text
            acknowledged.append((f"user:{u}", resp.json()["data"]["event_id"]))

    fake.mode["realtime"] = ("slow", 0.4)  # Realtime acts on a batch, then answers 0.4 s later
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))},
           **{k.upper(): str(v) for k, v in settings.items()}}
    # the loop serves the stand-ins meanwhile: the process is started and reaped off it
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", DRAIN_PROCESS, cwd=REPO, env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(fake.attempts("realtime")) < 4 and proc.returncode is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert proc.returncode is None, (await proc.stderr.read()).decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)  # the 4th batch was acted on, its answer not yet read
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    in_flight = len(fake.attempts("realtime"))
    assert 4 <= in_flight < 10  # killed mid-run: most of the 100 messages are not sent yet

    fake.mode["realtime"] = "ok"
    base = make_orchestrator(**{k: v for k, v in settings.items() if k in ("lease_seconds", "realtime_batch_size")})
    survivor = Orchestrator(base.services, base.settings)  # real time: the dead drainer's leases expire
    await asyncio.sleep(3.1)
    await survivor.drain(budget=20)

    got = Counter((m["topic"], m["payload"]["event_id"]) for m in fake.broadcasts())
    assert all(got[key] >= 1 for key in acknowledged), "an acknowledged event was lost"
    duplicates = sum(n - 1 for n in got.values())
    assert duplicates <= 10  # at most the batch in flight when the drain died (at least once)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "select status, count(*) from public.event_deliveries where user_id = any(%s::uuid[]) group by 1", (users,))
        assert dict(await cur.fetchall()) == {"sent": 100}
