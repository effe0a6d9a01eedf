"""Liveness is open and does no I/O; a deep check needs the health secret, the service role
key or a service_role token, and is refused before it touches a dependency."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shared.app import FunctionApp
from shared.health import add_health_route
from shared.services import Services
from shared.settings import CoreSettings

HEALTH_SECRET = "health-" + uuid.uuid4().hex
SERVICE_KEY = "sb_secret_" + uuid.uuid4().hex


@pytest.fixture
async def probe(base_env: dict[str, Any]) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    fn = FunctionApp("probe", settings=CoreSettings)
    add_health_route(fn)
    settings = CoreSettings.load(env={}, **{**base_env, "health_secret": HEALTH_SECRET, "supabase_service_role_key": SERVICE_KEY})
    services = Services(settings)
    fn.configure(settings=settings, services=services)
    # pools open on first use: open them now, so a check that ran would show in the counters
    await services.kv.ping()
    await services.db.fetch("select 1", service=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fn), base_url="http://t") as c:
        yield c, services
    await services.aclose()


def io(services: Services) -> tuple[int, int]:
    return services.kv.round_trips, services.db.round_trips


async def test_liveness_is_open_and_touches_nothing(probe: Any) -> None:
    c, services = probe
    before = io(services)
    for headers in ({}, {"authorization": "Bearer nonsense"}):
        r = await c.get("/functions/v1/probe/health", headers=headers)
        assert r.status_code == 200 and r.json()["data"] == {"status": "ok", "function": "probe"}
    assert io(services) == before


async def test_deep_check_without_a_service_credential_is_refused_before_any_check(probe: Any, make_token: Any) -> None:
    c, services = probe
    before = io(services)
    cases = [
        ({}, "AUTH_REQUIRED"),
        ({"authorization": "Bearer " + HEALTH_SECRET[:-1]}, "SECRET_INVALID"),
        ({"authorization": "Bearer " + make_token()}, "SECRET_INVALID"),  # a user is not enough
        ({"authorization": "Bearer " + make_token(role="service_role", expires_in=-60)}, "SECRET_INVALID"),
        ({"authorization": "Basic " + HEALTH_SECRET}, "AUTH_REQUIRED"),
    ]
    for headers, code in cases:
        r = await c.get("/functions/v1/probe/health?deep=1", headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (401, code), headers
    assert io(services) == before


@pytest.mark.parametrize("credential", ["health secret", "service role key", "service_role token"])
async def test_deep_check_with_a_service_credential_checks_the_dependencies(probe: Any, make_token: Any, credential: str) -> None:
    c, services = probe
    bearer = {"health secret": HEALTH_SECRET, "service role key": SERVICE_KEY,
              "service_role token": make_token(None, role="service_role")}[credential]
    before = io(services)
    r = await c.get("/functions/v1/probe/health?deep=1", headers={"authorization": f"Bearer {bearer}"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["status"] == "ok" and set(data["services"]) == {"database", "redis"}
    assert all(s["status"] == "up" for s in data["services"].values())
    kv, db = io(services)
    assert kv > before[0] and db > before[1]  # the checks did run
