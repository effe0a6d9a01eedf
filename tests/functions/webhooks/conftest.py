"""Driving the webhooks function in process against the run's real Postgres and Redis, with
payloads recorded from the providers' documentation (tests/events/webhooks/) signed here
with a test secret."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import load_event

PAYSTACK_SECRET = "sk_test_" + "4f" * 20
RC_AUTH = "Bearer rc-hook-" + "9a" * 12
SECRETS = {"paystack_secret_key": PAYSTACK_SECRET, "revenuecat_webhook_auth": RC_AUTH}
PAYSTACK_PATH = "/functions/v1/webhooks/paystack"
REVENUECAT_PATH = "/functions/v1/webhooks/revenuecat"


def sign(body: bytes, secret: str = PAYSTACK_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


def encode(payload: dict[str, Any] | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


NOW = datetime.now(UTC).replace(microsecond=0)


# -- payload builders (documented shapes, our values) -----------------------------------


@dataclass(frozen=True)
class TestPlan:
    code: str
    plan_code: str
    amount: int
    currency: str
    interval: str


def charge(plan: TestPlan, *, user_id: str | None = None, reference: str | None = None, amount: int | None = None,
           currency: str | None = None, customer_code: str | None = None, email: str | None = None,
           paid_at: datetime | None = None, paystack_plan: bool = True, metadata_plan: str | None = None) -> dict[str, Any]:
    ev = copy.deepcopy(load_event("webhooks/paystack_charge_success.json"))
    d = ev["data"]
    d["reference"] = reference or f"T{uuid.uuid4().hex[:15]}"
    d["id"] = int(time.time_ns() % 10**10)
    d["amount"] = plan.amount if amount is None else amount
    d["currency"] = currency or plan.currency
    d["paid_at"] = d["paidAt"] = iso(paid_at or NOW - timedelta(minutes=1))
    d["metadata"] = {"user_id": user_id, "plan": metadata_plan or plan.code} if user_id else {"plan": metadata_plan or plan.code}
    d["customer"]["customer_code"] = customer_code or f"CUS_{uuid.uuid4().hex[:14]}"
    d["customer"]["email"] = email or f"{uuid.uuid4().hex[:8]}@example.com"
    if paystack_plan:
        d["plan"].update(plan_code=plan.plan_code, amount=plan.amount, currency=plan.currency, interval=plan.interval)
    else:
        d["plan"] = {}
    return ev


def subscription_event(event: str, template: str, plan: TestPlan, *, customer_code: str, subscription_code: str,
                       status: str, email: str | None = None, **data: Any) -> dict[str, Any]:
    ev = copy.deepcopy(load_event(f"webhooks/{template}"))
    ev["event"] = event
    d = ev["data"]
    d.update(subscription_code=subscription_code, status=status, amount=plan.amount, **data)
    d["plan"].update(plan_code=plan.plan_code, amount=plan.amount, currency=plan.currency, interval=plan.interval)
    d["customer"]["customer_code"] = customer_code
    d["customer"]["email"] = email or f"{uuid.uuid4().hex[:8]}@example.com"
    return ev


def invoice(event: str, plan: TestPlan, *, customer_code: str, subscription_code: str, paid: bool,
            next_payment: datetime | None = None, amount: int | None = None, status: str | None = None,
            invoice_code: str | None = None) -> dict[str, Any]:
    ev = copy.deepcopy(load_event("webhooks/paystack_invoice_update.json"))
    ev["event"] = event
    d = ev["data"]
    d.update(invoice_code=invoice_code or f"INV_{uuid.uuid4().hex[:14]}", paid=paid,
             status=status or ("success" if paid else "pending"), amount=plan.amount if amount is None else amount,
             paid_at=iso(NOW) if paid else None,
             # an unpaid invoice's only time is its creation: after the payments before it
             created_at=iso(NOW + timedelta(seconds=1)) if not paid else d["created_at"])
    d["subscription"].update(subscription_code=subscription_code,
                             next_payment_date=iso(next_payment or NOW + timedelta(days=30)))
    d["customer"]["customer_code"] = customer_code
    d["transaction"].update(amount=d["amount"], currency=plan.currency)
    return ev


def rc(kind: str, app_user_id: str | None, *, event_id: str | None = None, at: datetime | None = None,
       expires: datetime | None = None, original_transaction_id: str | None = None, aliases: list[str] | None = None,
       template: str | None = None, **fields: Any) -> dict[str, Any]:
    name = template or {
        "INITIAL_PURCHASE": "initial_purchase", "RENEWAL": "renewal", "CANCELLATION": "cancellation",
        "EXPIRATION": "expiration", "BILLING_ISSUE": "billing_issue", "TRANSFER": "transfer", "TEST": "test",
    }.get(kind, "renewal")
    ev = copy.deepcopy(load_event(f"webhooks/revenuecat_{name}.json"))
    e = ev["event"]
    e["type"] = kind
    e["id"] = event_id or str(uuid.uuid4())
    e["event_timestamp_ms"] = ms(at or NOW)
    if kind != "TRANSFER":
        e["app_user_id"] = app_user_id
        e["original_app_user_id"] = app_user_id
        e["aliases"] = aliases if aliases is not None else [f"$RCAnonymousID:{uuid.uuid4().hex}"]
        e["original_transaction_id"] = original_transaction_id or f"otx-{app_user_id}"
        e["expiration_at_ms"] = ms(expires or NOW + timedelta(days=7))
    e.update(fields)
    return ev


# -- the client and the database ----------------------------------------------------------


class Hooks:
    def __init__(self, client: httpx.AsyncClient, services: Any, database_url: str, plans: list[str]) -> None:
        self.client = client
        self.services = services
        self.dsn = database_url
        self.plans = plans  # created by this test, deleted after it (the run shares one database)

    async def paystack(self, payload: dict[str, Any] | bytes, *, signature: str | None = None,
                       headers: dict[str, str] | None = None) -> httpx.Response:
        body = encode(payload)
        h = {"content-type": "application/json", "x-paystack-signature": sign(body) if signature is None else signature}
        h = {k: v for k, v in {**h, **(headers or {})}.items() if v is not None}
        return await self.client.post(PAYSTACK_PATH, content=body, headers=h)

    async def revenuecat(self, payload: dict[str, Any] | bytes, *, auth: str | None = RC_AUTH,
                         headers: dict[str, str] | None = None) -> httpx.Response:
        h = {"content-type": "application/json", **({"authorization": auth} if auth is not None else {}), **(headers or {})}
        return await self.client.post(REVENUECAT_PATH, content=encode(payload), headers=h)

    async def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql, params)
            return await cur.fetchall() if cur.description else []

    async def row(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        rows = await self.rows(sql, params)
        return rows[0] if rows else None

    async def tier(self, user: str) -> str | None:
        r = await self.row("select tier from public.user_tiers where user_id = %s", (user,))
        return r["tier"] if r else None

    async def redis_tier(self, user: str) -> str | None:
        from shared.ratelimit import tier_key

        kv = self.services.kv
        return await kv.get(tier_key(kv, user))  # type: ignore[no-any-return]

    async def subscriptions(self, user: str) -> list[dict[str, Any]]:
        return await self.rows("select * from public.subscriptions where user_id = %s order by created_at", (user,))

    async def delivery(self, delivery_id: int) -> dict[str, Any]:
        r = await self.row("select * from public.webhook_deliveries where id = %s", (delivery_id,))
        assert r is not None
        return r

    async def deliveries(self, provider: str, dedupe_key: str) -> list[dict[str, Any]]:
        return await self.rows("select * from public.webhook_deliveries where provider = %s and dedupe_key = %s",
                               (provider, dedupe_key))

    async def events(self, user: str) -> list[dict[str, Any]]:
        return await self.rows(
            "select event_type, payload, recipients from public.outbox where %s = any(recipients) "
            "and event_type = 'subscription.changed' order by id", (user,))

    async def plan(self, *, provider: str = "paystack", amount: int = 200000, currency: str = "NGN",
                   interval: str = "monthly", tier: str = "paid") -> TestPlan:
        code = f"test_{uuid.uuid4().hex[:10]}"
        plan_code = ("PLN_" if provider == "paystack" else "com.test.") + uuid.uuid4().hex[:14]
        await self.rows(
            "insert into public.subscription_plans (code, provider, tier, amount_minor, currency, interval, provider_plan_code) "
            "values (%s, %s, %s, %s, %s, %s, %s)", (code, provider, tier, amount, currency, interval, plan_code))
        self.plans.append(code)
        return TestPlan(code, plan_code, amount, currency, interval)


@pytest.fixture
def webhook_settings(base_env: dict[str, Any]) -> Callable[..., Any]:
    from functions.webhooks.settings import WebhooksSettings

    return lambda **overrides: WebhooksSettings.load(env={}, **{**base_env, **SECRETS, **overrides})


@pytest.fixture
async def make_hooks(client_for: Callable[..., httpx.AsyncClient], webhook_settings: Callable[..., Any],
                     database_url: str) -> AsyncIterator[Callable[..., Hooks]]:
    """make_hooks(**settings) -> Hooks driving the webhooks function with those settings."""
    from functions.webhooks.handler import fn
    from shared.services import Services

    plans: list[str] = []

    def _make(**overrides: Any) -> Hooks:
        services = Services(webhook_settings(**overrides))
        client = client_for(fn, services=services, **{**SECRETS, **overrides})
        return Hooks(client, services, database_url, plans)

    yield _make
    if plans:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute("delete from public.subscription_plans where code = any(%s)", (plans,))


@pytest.fixture
def hooks(make_hooks: Callable[..., Hooks]) -> Hooks:
    return make_hooks()
