"""POST /events (signed internal events, database webhooks), POST /drain, and who may call them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import psycopg
import pytest

from functions.realtime_orchestrator.handler import fn
from functions.realtime_orchestrator.signatures import sign
from tests.factories import add_match, create_user
from tests.functions.realtime_orchestrator.conftest import (
    DB_SECRET, DRAIN_SECRET, OLD_SECRET, SERVICE_KEY, WEBHOOK_SECRET, deliveries,
)
from tests.functions.realtime_orchestrator.fakes import ProviderFake

URL = "/functions/v1/realtime-orchestrator/events"


def signed(body: dict[str, Any], secret: str = WEBHOOK_SECRET, msg_id: str | None = None,
           timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    headers = sign(secret, msg_id or f"msg_{uuid.uuid4().hex}", raw, timestamp)
    return raw, {**headers, "content-type": "application/json"}


@pytest.fixture
def client(client_for: Any, orch_settings: dict[str, Any]) -> Any:
    return client_for(fn, **orch_settings)


async def outbox_row(database_url: str, event_id: str) -> tuple[Any, ...] | None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "select event_type, payload, recipients::text[], actor_id, processed_at is not null "
            "from public.outbox where event_id = %s", (event_id,))
        return await cur.fetchone()


async def test_a_signed_event_is_stored_once_and_delivered(
    client: Any, database_url: str, fake: ProviderFake
) -> None:
    u = await create_user(database_url)
    raw, headers = signed({"type": "like.received", "data": {"from": "someone"}, "recipients": [u]})
    resp = await client.post(URL, content=raw, headers=headers)
    assert resp.status_code == 202, resp.text
    data = resp.json()["data"]
    assert data["event_type"] == "like.received" and data["duplicate"] is False
    assert data["drained"]["sent"]["realtime"] >= 1
    row = await outbox_row(database_url, data["event_id"])
    assert row == ("like.received", {"from": "someone"}, [u], None, True)
    assert [m["payload"]["event_id"] for m in fake.broadcasts() if m["topic"] == f"user:{u}"] == [data["event_id"]]
    # the sender retries the same message (same webhook-id): nothing new
    again = await client.post(URL, content=raw, headers=headers)
    assert again.status_code == 202 and again.json()["data"] == {**data, "duplicate": True, "drained": None}
    assert len(await deliveries(database_url, data["event_id"])) == 1


async def test_in_background_mode_ingest_answers_first_and_delivers_after(
    client_for: Any, orch_settings: dict[str, Any], database_url: str, fake: ProviderFake
) -> None:
    """Off Lambda, ingest answers once the event is stored; the drain runs after the response."""
    from functions.realtime_orchestrator.logic import orchestrator_for

    client = client_for(fn, **{**orch_settings, "ingest_drain_mode": "background"})
    u = await create_user(database_url)
    raw, headers = signed({"type": "like.received", "data": {"from": "someone"}, "recipients": [u]})
    resp = await client.post(URL, content=raw, headers=headers)
    assert resp.status_code == 202, resp.text
    data = resp.json()["data"]
    assert data["duplicate"] is False and data["drained"] is None
    orch = orchestrator_for(fn.services, fn.settings)  # type: ignore[arg-type]
    await orch.wait_background()
    assert orch.background_drains >= 1
    row = await outbox_row(database_url, data["event_id"])
    assert row is not None and row[-1] is True  # processed
    assert [m["payload"]["event_id"] for m in fake.broadcasts() if m["topic"] == f"user:{u}"] == [data["event_id"]]


async def test_concurrent_ingests_share_background_drains_and_deliver_each_event_once(
    client_for: Any, orch_settings: dict[str, Any], database_url: str, fake: ProviderFake
) -> None:
    import asyncio

    from functions.realtime_orchestrator.logic import orchestrator_for

    client = client_for(fn, **{**orch_settings, "ingest_drain_mode": "background"})
    users = [await create_user(database_url) for _ in range(20)]
    bodies = [signed({"type": "like.received", "recipients": [u]}) for u in users]
    results = await asyncio.gather(*(client.post(URL, content=raw, headers=h) for raw, h in bodies))
    assert {r.status_code for r in results} == {202}
    orch = orchestrator_for(fn.services, fn.settings)  # type: ignore[arg-type]
    await orch.wait_background()
    assert 1 <= orch.background_drains < len(users)  # one drain batched several ingests
    for u, r in zip(users, results, strict=True):
        event_id = r.json()["data"]["event_id"]
        assert [m["payload"]["event_id"] for m in fake.broadcasts() if m["topic"] == f"user:{u}"] == [event_id]
        assert len(await deliveries(database_url, event_id)) == 1


def test_the_ingest_drain_mode_follows_the_platform(orch_settings: dict[str, Any], monkeypatch: Any) -> None:
    """Lambda freezes the process once the response is sent, so there the drain runs inline."""
    from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings

    auto = RealtimeOrchestratorSettings.load(env={}, **{**orch_settings, "ingest_drain_mode": "auto"})
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert auto.ingest_drains_inline is False
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "realtime-orchestrator-prod")
    assert auto.ingest_drains_inline is True
    background = RealtimeOrchestratorSettings.load(env={}, **{**orch_settings, "ingest_drain_mode": "background"})
    assert background.ingest_drains_inline is False


async def test_concurrent_duplicates_store_one_event(client: Any, database_url: str) -> None:
    import asyncio

    u = await create_user(database_url)
    raw, headers = signed({"type": "like.received", "recipients": [u]}, msg_id="msg_concurrent_" + uuid.uuid4().hex)
    results = await asyncio.gather(*(client.post(URL, content=raw, headers=headers) for _ in range(8)))
    assert {r.status_code for r in results} == {202}
    assert sorted(r.json()["data"]["duplicate"] for r in results) == [False] + [True] * 7
    event_id = results[0].json()["data"]["event_id"]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("select count(*) from public.outbox where event_id = %s", (event_id,))
        assert await cur.fetchone() == (1,)
    assert len(await deliveries(database_url, event_id)) == 1


async def test_a_rotated_secret_is_still_accepted(client: Any, database_url: str) -> None:
    u = await create_user(database_url)
    raw, headers = signed({"type": "like.received", "recipients": [u]}, secret=OLD_SECRET)
    assert (await client.post(URL, content=raw, headers=headers)).status_code == 202
    # a sender mid-rotation lists both signatures
    raw, headers = signed({"type": "like.received", "recipients": [u]}, secret="whsec_" + "QUJD" * 8)
    headers["webhook-signature"] += " " + sign(WEBHOOK_SECRET, headers["webhook-id"], raw,
                                                int(headers["webhook-timestamp"]))["webhook-signature"]
    assert (await client.post(URL, content=raw, headers=headers)).status_code == 202


@pytest.mark.parametrize("case", ["wrong secret", "tampered body", "old timestamp", "future timestamp",
                                  "no signature", "garbage signature", "bad timestamp"])
async def test_bad_signatures_are_refused(client: Any, case: str) -> None:
    body = {"type": "like.received", "recipients": [str(uuid.uuid4())]}
    raw, headers = signed(body)
    if case == "wrong secret":
        raw, headers = signed(body, secret="whsec_" + "c2VjcmV0" * 4)
    elif case == "tampered body":
        raw = raw.replace(b"like", b"lyke")
    elif case == "old timestamp":
        raw, headers = signed(body, timestamp=int(time.time()) - 301)
    elif case == "future timestamp":
        raw, headers = signed(body, timestamp=int(time.time()) + 301)
    elif case == "no signature":
        del headers["webhook-signature"]
    elif case == "garbage signature":
        headers["webhook-signature"] = "v1,bm90IGEgc2lnbmF0dXJl v2,xyz"
    elif case == "bad timestamp":
        headers["webhook-timestamp"] = "yesterday"
    resp = await client.post(URL, content=raw, headers=headers)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] in ("SIGNATURE_INVALID", "SIGNATURE_EXPIRED", "SIGNATURE_MISSING")


async def test_users_cannot_post_events(client: Any, make_token: Any, database_url: str) -> None:
    u = await create_user(database_url)
    body = json.dumps({"type": "like.received", "recipients": [u]})
    resp = await client.post(URL, content=body, headers={"authorization": f"Bearer {make_token(u)}",
                                                          "content-type": "application/json"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "SIGNATURE_MISSING"
    resp = await client.post(URL, content=body, headers={"authorization": f"Bearer {make_token(u, role='service_role')}"})
    assert resp.status_code == 401


async def test_invalid_events_get_stable_errors(client: Any) -> None:
    raw, headers = signed({"type": "nobody.knows", "data": {}})
    resp = await client.post(URL, content=raw, headers=headers)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "UNKNOWN_EVENT_TYPE"
    raw, headers = signed({"type": "like.received", "recipients": ["not-a-uuid"]})
    resp = await client.post(URL, content=raw, headers=headers)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "VALIDATION_ERROR"
    raw, headers = signed({"type": "like.received", "user_id": str(uuid.uuid4())})  # unknown field
    assert (await client.post(URL, content=raw, headers=headers)).status_code == 400
    raw = b"{not json"
    headers = {**sign(WEBHOOK_SECRET, "msg_x", raw), "content-type": "application/json"}
    resp = await client.post(URL, content=raw, headers=headers)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "INVALID_JSON"


async def test_a_database_webhook_becomes_an_event(client: Any, database_url: str, fake: ProviderFake) -> None:
    a = await create_user(database_url)
    b = await create_user(database_url)
    match_id = await add_match(database_url, a, b)
    hook = {"type": "INSERT", "table": "matches", "schema": "public",
            "record": {"id": match_id, "user_a": min(a, b), "user_b": max(a, b)}, "old_record": None}
    raw = json.dumps(hook).encode()
    resp = await client.post(URL, content=raw, headers={"x-webhook-secret": DB_SECRET, "content-type": "application/json"})
    assert resp.status_code == 202, resp.text
    data = resp.json()["data"]
    assert data["event_type"] == "match.created"
    assert await outbox_row(database_url, data["event_id"]) == (
        "match.created", {"match_id": match_id}, [min(a, b), max(a, b)], None, True)
    assert sorted(m["topic"] for m in fake.broadcasts() if m["payload"]["event_id"] == data["event_id"]) == \
        sorted([f"user:{a}", f"user:{b}"])
    # pg_net retrying the same body is the same event
    again = await client.post(URL, content=raw, headers={"x-webhook-secret": DB_SECRET})
    assert again.json()["data"]["duplicate"] is True and again.json()["data"]["event_id"] == data["event_id"]


async def test_database_webhooks_that_route_nowhere_and_wrong_secrets(client: Any) -> None:
    hook = {"type": "UPDATE", "table": "profiles", "schema": "public", "record": {"id": str(uuid.uuid4())},
            "old_record": {}}
    resp = await client.post(URL, json=hook, headers={"x-webhook-secret": DB_SECRET})
    assert resp.status_code == 202 and resp.json()["data"]["event_id"] is None
    assert "no route" in resp.json()["data"]["ignored"]
    # a subscription update that changed nothing the user cares about
    sub = {"id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), "status": "active", "tier": "paid", "plan_code": "p"}
    hook = {"type": "UPDATE", "table": "subscriptions", "schema": "public", "record": sub, "old_record": dict(sub)}
    assert (await client.post(URL, json=hook, headers={"x-webhook-secret": DB_SECRET})).json()["data"]["event_id"] is None
    for secret in ("wrong", ""):
        resp = await client.post(URL, json=hook, headers={"x-webhook-secret": secret})
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "SECRET_INVALID"


async def test_drain_needs_the_service_secret(client: Any, make_token: Any) -> None:
    drain = "/functions/v1/realtime-orchestrator/drain"
    assert (await client.post(drain)).status_code == 401
    assert (await client.post(drain, headers={"authorization": "Bearer nope"})).status_code == 401
    user = make_token(str(uuid.uuid4()))
    assert (await client.post(drain, headers={"authorization": f"Bearer {user}"})).status_code == 401
    for secret in (DRAIN_SECRET, SERVICE_KEY, make_token(None, role="service_role")):
        resp = await client.post(drain, headers={"authorization": f"Bearer {secret}"})
        assert resp.status_code == 200, resp.text
        assert {"routed", "sent", "dead"} <= set(resp.json()["data"])


def test_the_scheduled_event_drains_the_outbox(orch_settings: dict[str, Any], database_url: str) -> None:
    """EventBridge invokes the function with a scheduled event (no HTTP): it runs the drain."""
    import asyncio
    from types import SimpleNamespace

    from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
    from shared.services import Services
    from tests.conftest import load_event

    settings = RealtimeOrchestratorSettings.load(env={}, **{**orch_settings, "drain_budget_seconds": 2})
    services = Services(settings)
    policy = asyncio.get_event_loop_policy()
    previous = policy._local._loop  # type: ignore[attr-defined]  # restored afterwards, untouched
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        fn.configure(settings=settings, services=services)
        u = loop.run_until_complete(create_user(database_url))
        from tests.functions.realtime_orchestrator.conftest import enqueue

        event_id = loop.run_until_complete(enqueue(database_url, "like.received", {}, [u]))
        result = fn.lambda_handler(load_event("eventbridge_scheduled.json"), SimpleNamespace())
        assert result["ok"] is True and result["routed"] >= 1 and result["sent"]["realtime"] >= 1
        rows = loop.run_until_complete(deliveries(database_url, event_id))
        assert [r["status"] for r in rows] == ["sent"]
    finally:
        loop.run_until_complete(services.aclose())
        loop.close()
        asyncio.set_event_loop(previous)
