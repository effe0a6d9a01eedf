"""The function behind a Lambda Function URL (Mangum): the signature holds over the raw
body as Lambda passes it (base64 or text), and the scheduled invocation reconciles."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from tests.conftest import load_event
from tests.factories import add_subscription, create_user
from tests.functions.webhooks.conftest import NOW, Hooks, charge, encode, sign


def invoke(hooks: Hooks, event: dict[str, Any]) -> dict[str, Any]:
    """Call the Lambda entry point in a thread of its own (it runs its own event loop), with
    fresh services for that loop, closed afterwards."""
    from functions.webhooks import handler
    from shared.services import Services

    def call() -> dict[str, Any]:
        loop = asyncio.new_event_loop()  # as in a Lambda runtime's main thread
        asyncio.set_event_loop(loop)
        services = Services(hooks.services.settings)
        handler.fn.configure(settings=hooks.services.settings, services=services)
        try:
            ctx = SimpleNamespace(function_name="webhooks", aws_request_id="req-1", get_remaining_time_in_millis=lambda: 30000)
            return handler.handler(event, ctx)  # type: ignore[no-any-return]
        finally:
            loop.run_until_complete(services.aclose())
            loop.close()
            asyncio.set_event_loop(None)

    return call()


def post(body: bytes, signature: str, *, b64: bool) -> dict[str, Any]:
    event = load_event("webhooks/function_url_post_paystack.json")
    event["headers"]["x-paystack-signature"] = signature
    event["body"] = base64.b64encode(body).decode() if b64 else body.decode()
    event["isBase64Encoded"] = b64
    return event


async def test_function_url_post_keeps_the_raw_body_for_the_signature(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    plan = await hooks.plan()
    for b64 in (True, False):
        body = encode(charge(plan, user_id=user))
        result = await asyncio.to_thread(invoke, hooks, post(body, sign(body), b64=b64))
        assert result["statusCode"] == 200, result
        ack = json.loads(result["body"])["data"]
        assert ack["outcome"] == "applied"
        assert bytes((await hooks.delivery(ack["delivery_id"]))["body"]) == body
        bad = await asyncio.to_thread(invoke, hooks, post(body + b" ", sign(body), b64=b64))
        assert bad["statusCode"] == 401
    assert await hooks.tier(user) == "paid"


async def test_scheduled_invocation_downgrades_lapsed_tiers(hooks: Hooks, database_url: str) -> None:
    user = await create_user(database_url)
    # paid through a subscription whose period ended without an EXPIRATION ever arriving
    await add_subscription(database_url, user, provider="revenuecat", provider_ref=f"otx-{uuid.uuid4().hex[:8]}",
                           current_period_end=NOW - timedelta(minutes=5))
    await hooks.rows("update public.user_tiers set tier = 'paid', source = 'webhooks' where user_id = %s", (user,))
    report = await asyncio.to_thread(invoke, hooks, load_event("eventbridge_scheduled.json"))
    assert report["lapsed"] >= 1
    assert await hooks.tier(user) == "free" and await hooks.redis_tier(user) == "free"
    [event] = await hooks.events(user)
    assert event["payload"]["tier"] == "free" and event["payload"]["previous_tier"] == "paid"
