"""What the routes do: ingest (verify, normalise, store in the outbox, start the drain),
the inbox (a user's own events after a cursor, under RLS) and the drain trigger."""

from __future__ import annotations

import hashlib
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from functions.realtime_orchestrator import queries as q
from functions.realtime_orchestrator.models import Accepted, DatabaseWebhook, InboxEvent, InboxPage, InternalEvent
from functions.realtime_orchestrator.rules import RULES, table_event
from functions.realtime_orchestrator.signatures import verify_secret_header, verify_standard
from shared import errors
from shared.auth import require_service
from shared.envelope import has_nul, loads
from shared.inputs import parse_model, read_body
from shared.observability import json_log

if TYPE_CHECKING:
    from functions.realtime_orchestrator.drain import Orchestrator
    from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
    from shared.context import RequestContext
    from shared.services import Services

MAX_EVENT_BYTES = 256 * 1024
#: event ids derived from a sender's message id (not itself a uuid) or a webhook body
EVENT_NAMESPACE = uuid.UUID("5f0c1f8e-6a51-4d0c-9f51-2f3e9b7a4c11")

_orchestrators: weakref.WeakKeyDictionary[Any, Orchestrator] = weakref.WeakKeyDictionary()


def orchestrator_for(services: Services, settings: RealtimeOrchestratorSettings) -> Orchestrator:
    """One per warm container (provider tokens and breaker state are kept between calls)."""
    orch = _orchestrators.get(services)
    if orch is None or orch.settings is not settings:
        from functions.realtime_orchestrator.drain import Orchestrator

        orch = _orchestrators[services] = Orchestrator(services, settings)
    return orch


def _json(raw: bytes) -> Any:
    try:
        return loads(raw)
    except Exception:
        raise errors.BadRequest("the body is not valid JSON", code="INVALID_JSON") from None


def event_id_for(msg_id: str) -> str:
    try:
        return str(uuid.UUID(msg_id))
    except ValueError:
        return str(uuid.uuid5(EVENT_NAMESPACE, "msg:" + msg_id))


async def ingest(ctx: RequestContext) -> Accepted:
    settings: RealtimeOrchestratorSettings = ctx.settings  # type: ignore[assignment]
    raw = await read_body(ctx.request, MAX_EVENT_BYTES)
    headers = ctx.headers
    if "webhook-signature" in headers or "webhook-id" in headers:
        msg_id = verify_standard(
            settings.orchestrator_webhook_secrets, headers, raw,
            now=ctx.services.clock(), tolerance=settings.webhook_tolerance_seconds,
        )
        event: InternalEvent = parse_model(InternalEvent, _json(raw), "body")  # type: ignore[assignment]
        if event.type not in RULES:
            raise errors.Unprocessable(f"no routing rule for {event.type}", code="UNKNOWN_EVENT_TYPE")
        event_id = event_id_for(msg_id)
        event_type, data, recipients = event.type, event.data, [str(r) for r in event.recipients]
    elif settings.db_webhook_header.lower() in headers:
        verify_secret_header(settings.db_webhook_secret, headers.get(settings.db_webhook_header.lower()))
        hook: DatabaseWebhook = parse_model(DatabaseWebhook, _json(raw), "body")  # type: ignore[assignment]
        mapped = table_event(hook.schema_, hook.table, hook.type, hook.record, hook.old_record)
        if mapped is None:
            return Accepted(event_id=None, ignored=f"no route for {hook.type} on {hook.schema_}.{hook.table}")
        event_type, data, recipients = mapped
        # pg_net retries send the same body: the same change gets the same event id
        event_id = str(uuid.uuid5(EVENT_NAMESPACE, "db:" + hashlib.sha256(raw).hexdigest()))
    else:
        raise errors.Unauthenticated(
            "events must be signed (webhook-signature) or carry the database webhook secret", code="SIGNATURE_MISSING"
        )
    if has_nul(data):
        raise errors.ValidationFailed(
            "invalid body: data: text may not contain \\u0000",
            details=[{"field": "data", "message": "contains \\u0000", "type": "string_nul"}],
        )
    from psycopg.types.json import Jsonb

    orch = orchestrator_for(ctx.services, settings)
    row = await ctx.services.db.fetchrow(q.INSERT_EVENT, {
        "event_id": event_id, "event_type": event_type, "payload": Jsonb(data), "recipients": recipients,
        "now": orch.now(),
    }, service=True)
    accepted = Accepted(event_id=event_id, event_type=event_type, duplicate=row is None)
    if settings.drain_on_ingest and row is not None:
        if not settings.ingest_drains_inline:
            orch.drain_soon()
            return accepted
        try:
            report = await orch.drain(budget=settings.ingest_drain_budget_seconds, wait=False, max_rounds=1,
                                      limit=settings.ingest_drain_batch)
            accepted.drained = report.to_dict()
        except errors.AppError as exc:  # the event is stored; the scheduled drain delivers it
            json_log.log("warning", "drain after ingest failed", error=exc.code, event_id=event_id)
    return accepted


async def inbox(ctx: RequestContext) -> InboxPage:
    query = ctx.query
    params = {"user_id": ctx.end_user("the inbox is"), "since": query.since, "limit": query.limit + 1}
    sql = q.INBOX_LATEST if query.since is None else q.INBOX_SINCE
    if query.since is None:
        params["limit"] = query.limit
    rows = await ctx.services.db.fetch(sql, params, principal=ctx.principal, read_only=True)
    has_more = query.since is not None and len(rows) > query.limit
    rows = rows[: query.limit]
    events = [InboxEvent(id=r["id"], event_id=r["event_id"], type=r["event_type"], data=r["payload"] or {},
                         created_at=r["created_at"]) for r in rows]
    cursor = str(rows[-1]["id"]) if rows else str(query.since or 0)
    return InboxPage(events=events, cursor=cursor, has_more=has_more)


async def authorize_drain(ctx: RequestContext) -> None:
    """`Authorization: Bearer <drain secret | service role key | a service_role JWT>`."""
    settings: RealtimeOrchestratorSettings = ctx.settings  # type: ignore[assignment]
    await require_service(ctx, (settings.orchestrator_drain_secret, settings.supabase_service_role_key), "the drain")