"""GET /inbox: a reconnecting client catches up on its own events (RLS), by cursor."""

from __future__ import annotations

from typing import Any

import pytest

from functions.realtime_orchestrator.handler import fn
from tests.factories import create_user
from tests.functions.realtime_orchestrator.conftest import enqueue
from tests.functions.realtime_orchestrator.fakes import ProviderFake

INBOX = "/functions/v1/realtime-orchestrator/inbox"


@pytest.fixture
def client(client_for: Any, orch_settings: dict[str, Any]) -> Any:
    return client_for(fn, **orch_settings)


async def test_a_reconnecting_client_gets_what_it_missed_and_nothing_else(
    client: Any, database_url: str, make_token: Any, make_orchestrator: Any, fake: ProviderFake
) -> None:
    a = await create_user(database_url)
    b = await create_user(database_url)
    first = [await enqueue(database_url, "like.received", {"i": i}, [a]) for i in range(3)]
    await enqueue(database_url, "like.received", {"for": "b"}, [b])
    orch = make_orchestrator()
    await orch.drain(budget=5)
    token = {"authorization": f"Bearer {make_token(a)}"}

    page = (await client.get(INBOX, headers=token)).json()["data"]
    assert [e["event_id"] for e in page["events"]] == first
    assert [e["data"] for e in page["events"]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    # the Realtime messages carry the same cursor positions
    seen = [m["payload"]["id"] for m in fake.broadcasts() if m["topic"] == f"user:{a}"]
    assert seen == [e["id"] for e in page["events"]]

    # the client saw the first message live, then went offline
    since = page["events"][0]["id"]
    missed = [await enqueue(database_url, "message.received", {"preview": "hi"}, [a]) for _ in range(2)]
    await orch.drain(budget=5)
    resp = await client.get(INBOX, params={"since": since, "limit": 3}, headers=token)
    assert resp.status_code == 200
    page = resp.json()["data"]
    assert [e["event_id"] for e in page["events"]] == first[1:] + missed[:1]
    assert page["has_more"] is True
    page = (await client.get(INBOX, params={"since": page["cursor"]}, headers=token)).json()["data"]
    assert [e["event_id"] for e in page["events"]] == missed[1:] and page["has_more"] is False
    empty = (await client.get(INBOX, params={"since": page["cursor"]}, headers=token)).json()["data"]
    assert empty == {"events": [], "cursor": page["cursor"], "has_more": False}
    # b's events never show up in a's inbox
    b_page = (await client.get(INBOX, headers={"authorization": f"Bearer {make_token(b)}"})).json()["data"]
    assert [e["data"] for e in b_page["events"]] == [{"for": "b"}]


async def test_inbox_input_and_auth(client: Any, make_token: Any, database_url: str) -> None:
    a = await create_user(database_url)
    b = await create_user(database_url)
    token = {"authorization": f"Bearer {make_token(a)}"}
    assert (await client.get(INBOX)).status_code == 401
    resp = await client.get(INBOX, params={"user_id": b}, headers=token)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "VALIDATION_ERROR"
    for bad in ({"since": "-1"}, {"since": "abc"}, {"limit": "0"}, {"limit": "501"}):
        assert (await client.get(INBOX, params=bad, headers=token)).status_code == 400
    resp = await client.get(INBOX, headers=token)
    assert resp.status_code == 200 and resp.headers["cache-control"] == "private, no-store"
