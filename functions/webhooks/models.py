"""The providers' payloads (as documented; unknown fields are kept, never refused) and our
answer. Fields are optional and loosely typed on purpose: a provider adding or reshaping a
field must not turn a paid event into a failed delivery."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Loose = ConfigDict(extra="allow")


class PaystackPlan(BaseModel):
    model_config = Loose
    plan_code: str | None = Field(None, description="Paystack's plan code (PLN_...)")
    name: str | None = None
    amount: int | None = Field(None, description="price in the minor unit (kobo)")
    currency: str | None = None
    interval: str | None = None


class PaystackCustomer(BaseModel):
    model_config = Loose
    id: int | str | None = None
    email: str | None = None
    customer_code: str | None = Field(None, description="Paystack's customer code (CUS_...)")


class PaystackData(BaseModel):
    model_config = Loose
    id: int | str | None = None
    reference: str | None = Field(None, description="the transaction reference (charges)")
    status: str | None = None
    amount: int | None = Field(None, description="minor unit (kobo, pesewas, cents)")
    currency: str | None = None
    paid: bool | None = None
    paid_at: str | None = None
    paidAt: str | None = None  # noqa: N815 (Paystack's own spelling)
    created_at: str | None = None
    createdAt: str | None = None  # noqa: N815
    updated_at: str | None = None
    updatedAt: str | None = None  # noqa: N815
    plan: PaystackPlan | str | None = None
    customer: PaystackCustomer | None = None
    metadata: dict[str, Any] | str | None = None
    subscription_code: str | None = None
    email_token: str | None = None
    next_payment_date: str | None = None
    invoice_code: str | None = None
    period_start: str | None = None
    period_end: str | None = None
    subscription: dict[str, Any] | None = None
    transaction: dict[str, Any] | None = None
    transaction_reference: str | None = None
    refund_reference: str | None = None


class PaystackEvent(BaseModel):
    """`POST /paystack` body: `{"event": "charge.success", "data": {...}}`, signed with
    `x-paystack-signature` (hex HMAC-SHA512 of the raw body with the secret key)."""

    model_config = Loose
    event: str = Field(description="charge.success, subscription.create, invoice.update, refund.processed ...")
    data: PaystackData = Field(default_factory=PaystackData)


class RevenueCatEvent(BaseModel):
    model_config = Loose
    id: str | None = Field(None, description="unique per event; retries keep it")
    type: str | None = Field(None, description="INITIAL_PURCHASE, RENEWAL, CANCELLATION, EXPIRATION, TRANSFER ...")
    event_timestamp_ms: int | None = Field(None, description="when RevenueCat generated the event; retries keep it")
    app_user_id: str | None = None
    original_app_user_id: str | None = None
    aliases: list[str] | None = None
    transferred_from: list[str] | None = None
    transferred_to: list[str] | None = None
    product_id: str | None = None
    new_product_id: str | None = None
    entitlement_ids: list[str] | None = None
    entitlement_id: str | None = None
    period_type: str | None = None
    purchased_at_ms: int | None = None
    expiration_at_ms: int | None = None
    grace_period_expiration_at_ms: int | None = None
    auto_resume_at_ms: int | None = None
    environment: str | None = None
    store: str | None = None
    transaction_id: str | None = None
    original_transaction_id: str | None = None
    cancel_reason: str | None = None
    expiration_reason: str | None = None
    currency: str | None = None
    # informational only: never a reason to refuse an event
    price: float | str | None = None
    price_in_purchased_currency: float | str | None = None


class RevenueCatWebhook(BaseModel):
    """`POST /revenuecat` body: `{"api_version": "1.0", "event": {...}}`, authenticated by
    the Authorization header value configured in the RevenueCat dashboard."""

    model_config = Loose
    api_version: str | None = None
    event: RevenueCatEvent


class WebhookAck(BaseModel):
    received: bool = Field(True, description="the delivery is stored; the provider need not retry")
    delivery_id: int = Field(description="our id for the stored delivery")
    outcome: str = Field(description="applied | stale | ignored | flagged | pending | failed | invalid")
    duplicate: bool = Field(False, description="this delivery was already recorded; nothing was applied again")
