"""Helpers for the batch-swipe tests: drive the function in process, read what it wrote."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from functions.batch_swipe.handler import fn
from functions.batch_swipe.models import BatchSwipeResult

URL = "/functions/v1/batch-swipe"


@pytest.fixture
def swipe(client_for: Any) -> Any:
    """swipe(token, [(target, action), ...], key=None, **settings) -> httpx.Response. The
    app is configured once per test (settings overrides on the first call)."""
    state: dict[str, httpx.AsyncClient] = {}

    async def call(token: str | None, items: Any, key: str | None = None, headers: dict[str, str] | None = None,
                   **overrides: Any) -> httpx.Response:
        if "client" not in state:
            state["client"] = client_for(fn, **overrides)
        body: Any = items if isinstance(items, dict) else {"swipes": [{"target_id": t, "action": a} for t, a in items]}
        if key is not None:
            body["idempotency_key"] = key
        h = {"Authorization": f"Bearer {token}"} if token else {}
        h.update(headers or {})
        r = await state["client"].post(URL, json=body, headers=h)
        if r.status_code == 200:
            BatchSwipeResult.model_validate(r.json()["data"])
        return r

    call.state = state  # type: ignore[attr-defined]
    return call


def results(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [i["result"] for i in r.json()["data"]["results"]]


async def scalar(dsn: str, sql: str, *params: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
        return row[0] if row else None
