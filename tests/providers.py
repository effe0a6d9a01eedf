"""Local stand-ins for the providers' read APIs, on one real HTTP server (starlette served by
uvicorn on a free port, in a thread of its own): what PAYSTACK_VERIFY and REVENUECAT_VERIFY
read. Each records every request it got and answers from the state a test gives it.

The answers follow the providers' documented responses:

- Paystack `GET /transaction/verify/:reference` and `GET /subscription/:id_or_code`, with the
  secret key as Bearer: PaystackOSS/doc-code-snippets `src/api/transactions/verify/response.json`
  and `src/api/subscriptions/fetch/response.json` (`{"status": true, "message": ...,
  "data": {...}}`; an unknown reference is `{"status": false, "message": ...}` with 400/404;
  a wrong key 401 `{"status": false, "message": "Invalid key"}`). Subscription statuses:
  active, non-renewing, attention, completed, cancelled.
- RevenueCat `GET /v1/subscribers/:app_user_id` with the secret API key as Bearer:
  `{"request_date_ms": ..., "subscriber": {"original_app_user_id": ..., "subscriptions":
  {product_id: {"expires_date", "unsubscribe_detected_at", "billing_issues_detected_at",
  "grace_period_expires_date", ...}}, "entitlements": {...}}}` (RevenueCat's API v1
  reference, "Get or Create a Customer").

`down = True` answers 503 to everything (a provider outage); `delay` holds each answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

from tests.devserver import free_port


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def paystack_transaction(reference: str, *, status: str, amount: int, currency: str = "NGN",
                         plan_code: str | None = None, customer_code: str = "CUS_1rkzaqsv4rrhqo6",
                         email: str = "demo@test.com", paid_at: datetime | None = None) -> dict[str, Any]:
    """`data` of a verify answer (src/api/transactions/verify/response.json), our values."""
    paid = iso(paid_at or datetime.now(UTC))
    return {
        "id": 4099260516, "domain": "test", "status": status, "reference": reference, "receipt_number": None,
        "amount": amount, "message": None, "gateway_response": "Successful" if status == "success" else "Declined",
        "paid_at": paid, "created_at": paid, "channel": "card", "currency": currency, "ip_address": "197.210.54.33",
        "metadata": "", "fees": 10283, "fees_split": None,
        "authorization": {"authorization_code": "AUTH_uh8bcl3zbn", "bin": "408408", "last4": "4081",
                          "exp_month": "12", "exp_year": "2030", "channel": "card", "card_type": "visa ",
                          "bank": "TEST BANK", "country_code": "NG", "brand": "visa", "reusable": True,
                          "signature": "SIG_yEXu7dLBeqG0kU7g95Ke", "account_name": None},
        "customer": {"id": 181873746, "first_name": None, "last_name": None, "email": email,
                     "customer_code": customer_code, "phone": None, "metadata": None, "risk_action": "default"},
        "plan": plan_code, "split": {}, "order_id": None, "paidAt": paid, "createdAt": paid,
        "requested_amount": amount, "transaction_date": paid,
        "plan_object": {"plan_code": plan_code, "amount": amount, "currency": currency} if plan_code else {},
        "subaccount": {},
    }


def paystack_subscription(code: str, *, status: str, plan_code: str, amount: int, next_payment: datetime | None,
                          currency: str = "NGN", interval: str = "monthly",
                          customer_code: str = "CUS_xnxdt6s1zg1f4nx") -> dict[str, Any]:
    """`data` of a fetch-subscription answer (src/api/subscriptions/fetch/response.json)."""
    return {
        "invoices": [],
        "customer": {"first_name": "BoJack", "last_name": "Horseman", "email": "bojack@horsinaround.com",
                     "phone": None, "metadata": {}, "domain": "test", "customer_code": customer_code, "id": 1173,
                     "integration": 100032, "createdAt": "2016-03-29T20:03:09.000Z"},
        "plan": {"domain": "test", "name": "Pro", "plan_code": plan_code, "description": None, "amount": amount,
                 "interval": interval, "send_invoices": True, "send_sms": True, "currency": currency, "id": 28},
        "integration": 100032, "domain": "test", "start": 1459296064, "status": status, "quantity": 1,
        "amount": amount, "subscription_code": code, "email_token": "d7gofp6yppn3qz7", "easy_cron_id": None,
        "cron_expression": "0 0 28 * *", "next_payment_date": iso(next_payment), "open_invoice": None, "id": 9,
        "createdAt": "2016-03-30T00:01:04.000Z", "updatedAt": "2016-03-30T00:22:58.000Z",
    }


class ProviderAPI:
    """Paystack's and RevenueCat's read endpoints, as one local server."""

    def __init__(self, *, paystack_key: str, revenuecat_key: str) -> None:
        self.paystack_key = paystack_key
        self.revenuecat_key = revenuecat_key
        self.requests: list[dict[str, Any]] = []
        self.transactions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        #: app user id -> the `subscriber` object
        self.subscribers: dict[str, dict[str, Any]] = {}
        self.down = False
        self.delay = 0.0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def answer(request: Request, key: str, found: Any, missing: str, wrap: Any) -> JSONResponse:
            self.requests.append({"path": request.url.path, "authorization": request.headers.get("authorization")})
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.down:
                return JSONResponse({"status": False, "message": "Service Unavailable"}, status_code=503)
            if request.headers.get("authorization") != f"Bearer {key}":
                return JSONResponse({"status": False, "message": "Invalid key"}, status_code=401)
            if found is None:
                return JSONResponse({"status": False, "message": missing}, status_code=404)
            return JSONResponse(wrap(found))

        async def verify(request: Request) -> JSONResponse:
            ref = request.path_params["reference"]
            return await answer(request, self.paystack_key, self.transactions.get(ref), "Transaction reference not found",
                                lambda d: {"status": True, "message": "Verification successful", "data": d})

        async def subscription(request: Request) -> JSONResponse:
            code = request.path_params["code"]
            return await answer(request, self.paystack_key, self.subscriptions.get(code), "Subscription not found",
                                lambda d: {"status": True, "message": "Subscription retrieved successfully", "data": d})

        async def subscriber(request: Request) -> JSONResponse:
            user = request.path_params["user"]
            sub = self.subscribers.get(user, {"original_app_user_id": user, "subscriptions": {}, "entitlements": {}})
            return await answer(request, self.revenuecat_key, sub, "",
                                lambda d: {"request_date_ms": int(time.time() * 1000), "subscriber": d})

        return Starlette(routes=[
            Route("/transaction/verify/{reference}", verify),
            Route("/subscription/{code}", subscription),
            Route("/v1/subscribers/{user}", subscriber),
        ])

    def start(self) -> ProviderAPI:
        import uvicorn

        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the provider stand-in did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
