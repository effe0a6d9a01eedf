"""Helpers for the dashboard tests: call `public.spending_dashboard()` as a user, drive the
function over HTTP, and validate every document against the response model."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from functions.optimized_dashboard.handler import fn
from functions.optimized_dashboard.models import Dashboard
from shared.context import Principal
from shared.db import Database

URL = "/functions/v1/optimized-dashboard"


def principal(user_id: str) -> Principal:
    return Principal(user_id=user_id, role="authenticated")


@pytest.fixture
async def db(database_url: str) -> Any:
    database = Database(database_url, max_size=2)
    yield database
    await database.close()


async def dashboard_sql(
    db: Database, user_id: str, *, range: str = "month", analytics: bool = False, default_budget: str = "200",
    now: datetime | None = None,
) -> dict[str, Any]:
    """The SQL function's document, as `user_id` (RLS on), validated against the model."""
    row = await db.fetchrow(
        "select public.spending_dashboard(%s, %s, %s, %s) as d",
        (range, analytics, Decimal(default_budget), now),
        principal=principal(user_id),
    )
    assert row is not None
    Dashboard.model_validate(row["d"])
    return row["d"]  # type: ignore[no-any-return]


@pytest.fixture
def dash(client_for: Any) -> Any:
    """dash(token, method="GET", **params) -> httpx.Response from a fresh in-process app."""
    client: httpx.AsyncClient = client_for(fn)

    async def call(token: str | None, method: str = "GET", headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
        h = {"Authorization": f"Bearer {token}"} if token else {}
        h.update(headers or {})
        if method == "GET":
            r = await client.get(URL, params=params, headers=h)
        else:
            r = await client.post(URL, json=params, headers=h)
        if r.status_code == 200:
            Dashboard.model_validate(r.json()["data"])
        return r

    call.client = client  # type: ignore[attr-defined]
    return call
