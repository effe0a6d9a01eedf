"""Scheduled work over HTTP (Cloud Run's scheduler calls `POST /internal/scheduled` with a
shared secret; dark without one), and the backlog gauges measured after each run, against
the real schema: what the webhook-backlog and outbox-age alarms watch."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest

from shared.app import FunctionApp
from shared.observability import metrics
from shared.settings import CoreSettings
from tests import factories


def app_with_schedule() -> tuple[FunctionApp, list[str]]:
    fn = FunctionApp("cron", settings=CoreSettings)
    runs: list[str] = []

    @fn.scheduled
    async def tick(services: Any) -> dict[str, Any]:
        runs.append("tick")
        return {"ok": True, "drained": 3, "note": "text is not a metric"}

    @fn.gauge
    async def backlog(services: Any) -> dict[str, float]:
        return {"things.pending": 7.0}

    return fn, runs


async def test_the_internal_route_needs_the_scheduler_secret() -> None:
    metrics.clear()
    fn, runs = app_with_schedule()
    transport = httpx.ASGITransport(app=fn)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        fn.configure(settings=CoreSettings.load(env={}))
        r = await c.post("/functions/v1/cron/internal/scheduled")
        assert r.status_code == 404 and r.json()["error"]["code"] == "ROUTE_NOT_FOUND"  # dark without a secret
        fn.configure(settings=CoreSettings.load(env={}, scheduler_secret="s3cret-for-the-scheduler"))
        r = await c.post("/functions/v1/cron/internal/scheduled", headers={"x-scheduler-secret": "guess"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "SCHEDULER_SECRET_MISMATCH"
        assert runs == []
        r = await c.post("/functions/v1/cron/internal/scheduled", headers={"x-scheduler-secret": "s3cret-for-the-scheduler"})
        assert r.status_code == 200 and r.json()["data"] == {"ok": True, "drained": 3, "note": "text is not a metric"}
    assert runs == ["tick"]
    counters = metrics.snapshot()
    assert counters["scheduled.drained"] == 3 and counters["things.pending"] == 7.0
    assert "scheduled.ok" not in counters and "scheduled.note" not in counters
    metrics.clear()


async def test_backlog_gauges_read_the_schema(base_env: dict[str, Any], database_url: str) -> None:
    from functions.realtime_orchestrator.backlog import gauges as outbox_gauges
    from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
    from functions.webhooks.backlog import gauges as webhook_gauges
    from functions.webhooks.settings import WebhooksSettings
    from shared.services import Services

    hooks = Services(WebhooksSettings.load(env={}, **base_env))
    outbox = Services(RealtimeOrchestratorSettings.load(env={}, **base_env))
    try:
        before = (await webhook_gauges(hooks))["webhooks.pending"]
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(
                "insert into public.webhook_deliveries (provider, dedupe_key, body, outcome) values "
                "('paystack', %s, '\\x7b7d', 'pending'), ('paystack', %s, '\\x7b7d', 'applied')",
                (f"gauge-{uuid.uuid4()}", f"gauge-{uuid.uuid4()}"),
            )
            user = await factories.create_user(conn)
            await conn.execute(
                "insert into public.event_deliveries (event_id, channel, target, user_id, event_type, priority, "
                "available_at, event_created_at) values "
                "(%s, 'realtime', 'user:x', %s, 'match', 'normal', now() - interval '600 seconds', now()), "
                "(%s, 'realtime', 'user:y', %s, 'match', 'normal', now() + interval '1 hour', now())",
                (uuid.uuid4(), user, uuid.uuid4(), user),
            )
        assert (await webhook_gauges(hooks))["webhooks.pending"] == before + 1  # applied ones do not count
        assert (await outbox_gauges(outbox))["outbox.oldest_age_s"] >= 600  # the future one is not due
    finally:
        await hooks.aclose()
        await outbox.aclose()


@pytest.mark.parametrize("route", ["webhooks", "realtime-orchestrator"])
def test_the_functions_alarms_watch_register_their_gauges(route: str) -> None:
    import importlib

    from functions import FUNCTIONS

    fn = importlib.import_module(FUNCTIONS[route]).fn
    assert fn._gauges and fn._scheduled is not None
