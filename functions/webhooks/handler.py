"""webhooks: Paystack and RevenueCat events, verified, recorded once, applied in order.

The ASGI app (`app`) and the Lambda entry point (`handler`).

    POST /functions/v1/webhooks/paystack     x-paystack-signature: HMAC-SHA512 of the body
    POST /functions/v1/webhooks/revenuecat   Authorization: the value set in the dashboard

Both are `auth="public"`: the provider authenticates by signature, checked before anything
is read into the database. They have no rate limit on purpose: a 429 is a failed delivery
the provider retries for hours, bad signatures are refused before any I/O, and flooding is
the allow-list's and the CDN's job. They need no Redis to answer (only the tier write,
which is queued when Redis is down). Never cached. The scheduled invocation reconciles
pending deliveries, unsynced tiers and lapsed subscriptions (`logic`, `reconcile`).
"""

from __future__ import annotations

from typing import Any

from functions.webhooks.backlog import gauges
from functions.webhooks.models import PaystackEvent, RevenueCatWebhook, WebhookAck
from functions.webhooks.settings import WebhooksSettings
from shared.app import FunctionApp
from shared.context import RequestContext
from shared.health import add_health_route

fn = FunctionApp("webhooks", settings=WebhooksSettings, description="Paystack and RevenueCat events, verified, recorded once, applied in order")
add_health_route(fn, ('database', 'redis'))

WEBHOOK = {"auth": "public", "raw_body": True, "rate": None, "cache": None, "response": WebhookAck, "tags": ("webhooks",)}


@fn.post("/paystack", body=PaystackEvent, summary="Paystack event (signed); stored once, applied in order", **WEBHOOK)
async def paystack(ctx: RequestContext) -> Any:
    from functions.webhooks.logic import receive

    return await receive(ctx, "paystack")


@fn.post("/revenuecat", body=RevenueCatWebhook, summary="RevenueCat event (Authorization); stored once, applied in order", **WEBHOOK)
async def revenuecat(ctx: RequestContext) -> Any:
    from functions.webhooks.logic import receive

    return await receive(ctx, "revenuecat")


@fn.scheduled
async def reconcile(services: Any) -> dict[str, Any]:
    from functions.webhooks.reconcile import reconcile as run

    return await run(services)


fn.gauge(gauges)  # the backlog alarm's metric, after each scheduled run

app = fn
handler = fn.lambda_handler
