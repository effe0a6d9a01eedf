"""Settings for webhooks: the shared keys plus this function's own."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import field_validator

from shared.settings import CoreSettings, csv


class WebhooksSettings(CoreSettings):
    # Paystack: the secret key (sk_live_... / sk_test_...) signs every delivery
    paystack_secret_key: str | None = None
    """Paystack's secret key, `sk_live_...` (secret): it signs every delivery (HMAC-SHA512)."""
    paystack_allowed_ips: tuple[str, ...] = ()
    """Source addresses (or CIDR ranges) Paystack may call from; empty: no allow-list. Paystack
    publishes 52.31.139.75, 52.49.173.169, 52.214.14.220. The client address is read the same
    trusted way as the rate limiter's (TRUSTED_PROXY_HEADER)."""

    paystack_verify: bool = False
    """Read the object a Paystack delivery is about back from Paystack's API (`GET
    /transaction/verify/:reference` for a charge, `GET /subscription/:code` for subscription
    and invoice events, with PAYSTACK_SECRET_KEY) and apply Paystack's answer, not the body.
    A failed read applies the body and queues the delivery for reconciliation to verify"""
    paystack_api_url: str = "https://api.paystack.co"
    """Paystack's API base URL (PAYSTACK_VERIFY)."""
    paystack_api_timeout_s: float = 0.4
    """Deadline of a Paystack API read, in seconds (at most half of `webhook_deadline_s`)."""

    # RevenueCat: the exact Authorization header value set in the dashboard
    revenuecat_webhook_auth: str | None = None
    """The exact Authorization header value set in RevenueCat's dashboard (secret)."""
    revenuecat_verify: bool = False
    """Re-read the subscriber from the RevenueCat API (`GET /v1/subscribers/:id`, with
    REVENUECAT_API_KEY) before applying an event, and apply its answer. A failed read applies
    the body and queues the delivery for reconciliation to verify"""
    revenuecat_api_key: str | None = None
    """RevenueCat secret API key (v1), for REVENUECAT_VERIFY (secret)."""
    revenuecat_api_url: str = "https://api.revenuecat.com"
    """RevenueCat's API base URL."""
    revenuecat_api_timeout_s: float = 0.4
    """Deadline of the RevenueCat re-read, in seconds (at most half of `webhook_deadline_s`)."""
    revenuecat_allow_sandbox: bool = True
    """SANDBOX purchases (TestFlight, test cards) change tiers; turn off in production"""
    revenuecat_entitlement_tier: Literal["free", "paid"] = "paid"
    """The tier an active RevenueCat entitlement grants when its product is not a plan row"""

    webhook_deadline_s: float = 0.9
    """A delivery is answered within this many seconds: the optional provider read (at most
    its `*_api_timeout_s`, and at most half of this) and then the database work in what is
    left; past it the answer is 503, so the provider retries (they wait far longer than this)"""
    webhook_max_body: int = 256 * 1024
    """Largest delivery body accepted, in bytes (413 beyond)."""
    webhook_max_attempts: int = 20
    """Reconciliation retries a pending or failed delivery, or a provider read that failed,
    at most this many times"""

    @field_validator("paystack_allowed_ips", mode="before")
    @classmethod
    def _ips(cls, v: object) -> tuple[str, ...]:
        items = csv(v)  # type: ignore[arg-type]
        for item in items:
            ipaddress.ip_network(item, strict=False)  # a typo fails at load, naming the key
        return items
