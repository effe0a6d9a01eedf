"""Fixtures for the orchestrator: the local provider fake, provider credentials, settings that
point every provider at the fake, a clock you move by hand, and helpers to put events in the
outbox and drain them."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.functions.realtime_orchestrator.fakes import ProviderFake

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"orchestrator-test-secret-32bytes").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-previous-secret-being-rotated").decode()
DB_SECRET = "db-webhook-secret-value"
DRAIN_SECRET = "drain-secret-value"
SERVICE_KEY = "service-role-key-for-tests"


@pytest.fixture(scope="session")
def provider_keys() -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    return {
        "fcm_private": rsa_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        "fcm_public": rsa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "apns_private": ec_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        "apns_public": ec_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
    }


@pytest.fixture(scope="session")
def provider_fake_server(provider_keys: dict[str, str]) -> Iterator[ProviderFake]:
    fake = ProviderFake(service_key=SERVICE_KEY, fcm_public_key=provider_keys["fcm_public"],
                        apns_public_key=provider_keys["apns_public"])
    yield fake
    fake.close()


@pytest.fixture
def fake(provider_fake_server: ProviderFake) -> ProviderFake:
    provider_fake_server.reset()
    return provider_fake_server


@pytest.fixture(scope="session")
def orch_settings(base_env: dict[str, Any], provider_fake_server: ProviderFake, provider_keys: dict[str, str]) -> dict[str, Any]:
    url = provider_fake_server.url
    account = {"type": "service_account", "project_id": "edgefn-test", "private_key_id": "k1",
               "private_key": provider_keys["fcm_private"], "client_email": "push@edgefn-test.iam.gserviceaccount.com",
               "token_uri": "https://oauth2.invalid/token"}
    return {
        **base_env,
        "orchestrator_webhook_secrets": f"{WEBHOOK_SECRET},{OLD_SECRET}",
        "db_webhook_secret": DB_SECRET,
        "orchestrator_drain_secret": DRAIN_SECRET,
        "supabase_service_role_key": SERVICE_KEY,
        "realtime_url": url,
        "realtime_messages_per_second": 10_000,
        "fcm_service_account_json": json.dumps(account),
        "fcm_url": url,
        "fcm_token_url": url + "/token",
        "apns_url": url,
        "apns_key_id": "KEYID12345",
        "apns_team_id": "TEAMID1234",
        "apns_topic": "com.example.app",
        "apns_private_key": provider_keys["apns_private"],
        "push_timeout_seconds": 2.0,
        "realtime_timeout_seconds": 2.0,
        # the drain after an ingest runs before the response, so a test reads its effects
        # (and its report) as soon as the ingest returns; test_ingest covers "background"
        "ingest_drain_mode": "inline",
    }


class FakeClock:
    """Wall-clock seconds that move only when told, starting at the real time."""

    def __init__(self, start: float | None = None) -> None:
        import time

        self.t = time.time() if start is None else start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_orchestrator(
    orch_settings: dict[str, Any], clock: FakeClock
) -> AsyncIterator[Callable[..., Any]]:
    """make_orchestrator(**settings) -> an Orchestrator on real Postgres/Redis, the fake
    providers, the test clock (breakers too) and fresh services (closed afterwards). The
    test's orchestrators share a Redis key prefix of their own (the providers' pace and the
    APNs provider token are shared through Redis, as between instances)."""
    from functions.realtime_orchestrator.drain import Orchestrator
    from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
    from shared.resilience import OutboundHTTP
    from shared.services import Services

    opened: list[Services] = []

    prefix = f"{orch_settings['key_prefix']}:{uuid.uuid4().hex[:8]}"

    def _make(services: Services | None = None, **overrides: Any) -> Orchestrator:
        settings = RealtimeOrchestratorSettings.load(env={}, **{**orch_settings, "key_prefix": prefix, **overrides})
        if services is None:
            services = Services(settings)
            opened.append(services)
        outbound = OutboundHTTP(services.http, clock=clock, reset_timeout=30.0)
        return Orchestrator(services, settings, clock=clock, sleep=clock.sleep, outbound=outbound)

    yield _make
    for s in opened:
        await s.aclose()


@pytest.fixture(autouse=True)
async def _quiet_ledger(database_url: str) -> None:
    """Deliveries other tests left pending would otherwise be sent during this test, and
    events other functions' tests enqueued (a backlog) would be routed before its own."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("update public.event_deliveries set status = 'dead', last_error = 'test cleanup' "
                           "where status in ('pending', 'leased')")
        await conn.execute("update public.outbox set processed_at = now(), last_error = 'test cleanup' "
                           "where processed_at is null")


async def enqueue(database_url: str, event_type: str, payload: dict[str, Any], recipients: list[str],
                  actor: str | None = None) -> str:
    """An event in the outbox the way our functions write one: `enqueue_event` inside a
    transaction, as the service acting for a verified user (their claims: actor_id is the
    user) or as the service alone."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        async with conn.transaction():
            if actor:
                await conn.execute("select set_config('role', 'service_role', true), "
                                   "set_config('request.jwt.claims', %s, true)",
                                   (json.dumps({"sub": actor, "role": "authenticated"}),))
            cur = await conn.execute("select public.enqueue_event(%s, %s::jsonb, %s::uuid[])",
                                     (event_type, json.dumps(payload), recipients))
            row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def add_device(database_url: str, user_id: str, platform: str = "fcm", token: str | None = None) -> tuple[str, str]:
    """(device id, token); APNs tokens are hex, as Apple's are."""
    token = token or (os.urandom(32).hex() if platform == "apns" else f"fcm-{uuid.uuid4().hex}")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "insert into public.device_tokens (user_id, platform, token) values (%s, %s, %s) returning id",
            (user_id, platform, token))
        row = await cur.fetchone()
    assert row is not None
    return str(row[0]), token


async def set_prefs(database_url: str, user_id: str, **fields: Any) -> None:
    if "channels" in fields:
        fields["channels"] = json.dumps(fields["channels"])
    cols = ["user_id", *fields]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            f"insert into public.notification_preferences ({', '.join(cols)}) values ({', '.join(['%s'] * len(cols))}) "
            f"on conflict (user_id) do update set {', '.join(f'{c} = excluded.{c}' for c in fields) or 'user_id = excluded.user_id'}",
            (user_id, *fields.values()))


async def deliveries(database_url: str, event_id: str) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("select * from public.event_deliveries where event_id = %s order by id", (event_id,))
        return await cur.fetchall()
