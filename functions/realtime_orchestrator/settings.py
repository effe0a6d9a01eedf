"""Settings for realtime-orchestrator: the shared keys plus this function's own.

Every provider URL is a setting, so tests and the benchmark point them at local servers."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from functions.realtime_orchestrator.signatures import secret_bytes
from shared.settings import CoreSettings, csv


class RealtimeOrchestratorSettings(CoreSettings):
    # -- ingest ---------------------------------------------------------------------------
    orchestrator_webhook_secrets: tuple[str, ...] = ()
    """Standard Webhooks secrets for internal events (secret), comma-separated: several at
    once while a secret is rotated. Each is base64, with or without the `whsec_` prefix, as
    the spec's reference libraries read it; one that is not fails at load."""
    webhook_tolerance_seconds: int = 300
    """How far a signed event's timestamp may be from now, in seconds (replay protection)."""
    db_webhook_header: str = "x-webhook-secret"
    """Supabase database webhooks: the header the webhook is configured to send and its value"""
    db_webhook_secret: str | None = None
    """The value Supabase database webhooks send in DB_WEBHOOK_HEADER (secret); unset, they are refused."""
    orchestrator_drain_secret: str | None = None
    """`POST /drain` (a cron, EventBridge over HTTP): `Authorization: Bearer <this>`; the
    service role key is accepted too (secret)."""
    drain_on_ingest: bool = True
    """Start delivering what was just ingested at once (the scheduled drain delivers it
    otherwise)"""
    ingest_drain_mode: Literal["auto", "inline", "background"] = "auto"
    """How: "background" answers as soon as the event is stored and drains in this process after
    the response, one drain at a time however many ingests ask (it batches what they stored);
    "inline" drains a little before answering, for Lambda, which freezes the process once the
    response is sent; "auto" is inline on Lambda, else background"""
    ingest_drain_budget_seconds: float = 2.0
    """Time the drain after an ingest may take, in seconds."""
    ingest_drain_batch: int = 50
    """Each step's batch in the inline drain (small: the sender is waiting)"""
    drain_budget_seconds: float = 20.0
    """Time one scheduled `/drain` may take, in seconds."""

    # -- outbox and deliveries ------------------------------------------------------------
    outbox_batch_size: int = 200
    """Outbox events claimed for routing per round."""
    delivery_batch_size: int = 500
    """Deliveries claimed per channel per round."""
    lease_seconds: int = 60
    """How long a claimed row stays leased to one drainer before another may take it."""
    max_attempts: int = 8
    """Failed attempts after which a delivery is dead (a dead letter)."""
    retry_base_seconds: float = 2.0
    """First retry delay after a failed attempt; it doubles with each attempt."""
    retry_max_seconds: float = 600.0
    """Longest retry delay, in seconds."""
    throttle_base_seconds: float = Field(default=0.5, gt=0)
    """After a provider's 429 without Retry-After, every drainer pauses that provider this
    long, doubling (jittered) with each 429 in a row."""
    throttle_max_seconds: float = Field(default=60.0, gt=0)
    """The ceiling of that pause (a Retry-After or the provider's documented minimum, such as
    FCM's minute after QUOTA_EXCEEDED, can be longer)."""
    max_throttles: int = Field(default=30, ge=1)
    """A delivery refused with 429 this many times is dead ("throttled N times"): throttling
    does not spend attempts (MAX_ATTEMPTS), it has this budget of its own."""

    # -- routing --------------------------------------------------------------------------
    batch_window_seconds: int = 60
    """Normal-priority pushes for one user within this window coalesce into one"""
    digest_window_seconds: int = 3600
    """The digest window (tier rules send some events to free users in a digest)"""
    push_daily_cap: int = 50
    """Pushes per user per local day, unless the user's profile sets its own cap."""
    push_coalescing: bool = True
    """Off: every event its own push (the benchmark's baseline)"""

    # -- Supabase Realtime ----------------------------------------------------------------
    realtime_url: str | None = None
    """Base URL (defaults to SUPABASE_URL); the broadcast endpoint is
    <base>/realtime/v1/api/broadcast"""
    realtime_topic_prefix: str = "user:"
    """Prefix of each user's private Realtime topic (`user:<id>`)."""
    realtime_messages_per_second: int = 100
    """The plan's messages per second (Free 100, Pro 500): the most the shared pace sends; it
    falls below after a 429 and grows back."""
    realtime_batch_size: int = 100
    """The most messages in one Realtime broadcast request."""
    realtime_batch_seconds: float = Field(default=0.02, gt=0)
    """A broadcast request carries at most this many seconds of the current send rate (at
    least one message, at most REALTIME_BATCH_SIZE): Realtime refuses a batch whose size,
    added to the project's 60 s average, passes the plan, so small batches waste little."""
    realtime_timeout_seconds: float = 5.0
    """Deadline of a Realtime broadcast request, in seconds."""

    # -- FCM HTTP v1 ----------------------------------------------------------------------
    fcm_service_account_json: str | None = None
    """The FCM service account JSON, inline (secret)."""
    fcm_service_account_file: str | None = None
    """Path to the FCM service account JSON (instead of FCM_SERVICE_ACCOUNT_JSON)."""
    fcm_project_id: str | None = None
    """The Firebase project id; default: the service account's."""
    fcm_url: str = "https://fcm.googleapis.com"
    """FCM's base URL."""
    fcm_token_url: str | None = None
    """Overrides the service account's token_uri (tests)"""
    push_timeout_seconds: float = 5.0
    """Deadline of one push request (FCM or APNs), in seconds."""
    push_concurrency: int = 32
    """Push requests in flight at once per drainer."""
    fcm_messages_per_second: int = Field(default=10_000, ge=1)
    """The most FCM sends per second (the HTTP v1 quota is 600,000 a minute per project); the
    pace falls below it after QUOTA_EXCEEDED and grows back."""

    # -- APNs (token-based auth) ----------------------------------------------------------
    apns_url: str = "https://api.push.apple.com"
    """APNs' base URL (`https://api.sandbox.push.apple.com` for development builds)."""
    apns_key_id: str | None = None
    """The APNs auth key's id (10 characters)."""
    apns_team_id: str | None = None
    """The Apple developer team id."""
    apns_private_key: str | None = None
    """The APNs .p8 auth key (PEM), inline (secret)."""
    apns_private_key_file: str | None = None
    """Path to the .p8 key (instead of APNS_PRIVATE_KEY)."""
    apns_topic: str | None = None
    """The app's bundle id (the `apns-topic` header)."""
    apns_messages_per_second: int = Field(default=5_000, ge=1)
    """The most APNs sends per second (Apple publishes no figure); the pace falls below it
    after a 429 and grows back."""

    @field_validator("supabase_service_role_key")
    @classmethod
    def _service_role(cls, v: str | None) -> str | None:
        """Realtime drops a private broadcast, silently and with a 202, when the caller's role
        may not write to `realtime.messages` (batch_broadcast.ex): a key of another role
        (the anon key) would lose every message. Refused here when the key says its role."""
        role = _jwt_role(v)
        if role is not None and role != "service_role":
            raise ValueError(f"is a key of role {role!r}; Realtime drops private broadcasts unless it is the service role's")
        return v

    @field_validator("orchestrator_webhook_secrets", mode="before")
    @classmethod
    def _secrets(cls, v: object) -> tuple[str, ...]:
        items = csv(v)  # type: ignore[arg-type]
        for i, secret in enumerate(items, 1):
            try:
                secret_bytes(secret)
            except ValueError as exc:
                raise ValueError(f"secret {i} of {len(items)}: {exc}") from None
        return items

    @property
    def ingest_drains_inline(self) -> bool:
        """Whether ingest drains before answering (see `ingest_drain_mode`)."""
        if self.ingest_drain_mode == "auto":
            return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
        return self.ingest_drain_mode == "inline"

    @property
    def broadcast_url(self) -> str:
        base = self.realtime_url or self.supabase_url
        if not base:
            from shared.settings import ConfigError

            raise ConfigError("REALTIME_URL (or SUPABASE_URL) is not set")
        return base.rstrip("/") + "/realtime/v1/api/broadcast"


def _jwt_role(key: str | None) -> str | None:
    """The `role` claim of a legacy (JWT) API key, unverified; None for other keys."""
    import base64
    import json

    parts = (key or "").split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return role if isinstance(role, str) else None
