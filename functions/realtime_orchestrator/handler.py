"""realtime-orchestrator: routes events to Supabase Realtime and push notifications.

- `POST /events`: internal events (Standard Webhooks signature) and Supabase database
  webhooks (secret header) into the outbox; users cannot post events.
- `POST /drain`: the scheduled drain over HTTP (service secret); EventBridge invokes the
  same drain as a scheduled event (no HTTP).
- `GET /inbox?since=<cursor>`: the caller's own recent events, to catch up after a reconnect.

The ASGI app (`app`) and the Lambda entry point (`handler`)."""

from __future__ import annotations

from typing import Any

from functions.realtime_orchestrator import logic
from functions.realtime_orchestrator.backlog import gauges
from functions.realtime_orchestrator.models import Accepted, InboxPage, InboxQuery
from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
from shared.app import FunctionApp
from shared.context import RequestContext
from shared.health import add_health_route

fn = FunctionApp("realtime-orchestrator", settings=RealtimeOrchestratorSettings,
                 description="Routes events to Supabase Realtime and push notifications")
add_health_route(fn, ("database", "redis"))


@fn.post("/events", auth="public", raw_body=True, max_body=logic.MAX_EVENT_BYTES, response=Accepted, status_code=202,
         summary="Ingest a signed internal event or a Supabase database webhook")
async def events(ctx: RequestContext) -> Accepted:
    return await logic.ingest(ctx)


@fn.post("/drain", auth="public", raw_body=True, max_body=1024,
         summary="Drain the outbox and deliver what is due (service secret)")
async def drain(ctx: RequestContext) -> dict[str, Any]:
    await logic.authorize_drain(ctx)
    report = await logic.orchestrator_for(ctx.services, ctx.settings).drain()  # type: ignore[arg-type]
    return report.to_dict()


@fn.get("/inbox", auth="required", query=InboxQuery, response=InboxPage,
        summary="The caller's own recent events after a cursor (catch-up after a reconnect)")
async def inbox(ctx: RequestContext) -> InboxPage:
    return await logic.inbox(ctx)


@fn.scheduled
async def scheduled_drain(services: Any) -> dict[str, Any]:
    report = await logic.orchestrator_for(services, fn.settings).drain()  # type: ignore[arg-type]
    return {"ok": True, **report.to_dict()}


fn.gauge(gauges)  # the backlog alarm's metric, after each scheduled run

app = fn
handler = fn.lambda_handler
