"""Settings for realtime-orchestrator: the shared keys plus this function's own.

Every provider URL is a setting, so tests and the benchmark point them at local servers."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import field_validator

from shared.settings import CoreSettings, csv


class RealtimeOrchestratorSettings(CoreSettings):
    # -- ingest ---------------------------------------------------------------------------
    #: Standard Webhooks secrets for internal events (`whsec_<base64>`), comma-separated:
    #: several at once while a secret is rotated
    orchestrator_webhook_secrets: tuple[str, ...] = ()
    webhook_tolerance_seconds: int = 300
    #: Supabase database webhooks: the header the webhook is configured to send and its value
    db_webhook_header: str = "x-webhook-secret"
    db_webhook_secret: str | None = None
    #: `POST /drain` (a cron, EventBridge over HTTP): `Authorization: Bearer <this>`; the
    #: service role key is accepted too
    orchestrator_drain_secret: str | None = None
    #: start delivering what was just ingested at once (the scheduled drain delivers it otherwise)
    drain_on_ingest: bool = True
    #: how: "background" answers as soon as the event is stored and drains in this process
    #: after the response, one drain at a time however many ingests ask (it batches what
    #: they stored); "inline" drains a little before answering, for Lambda, which freezes
    #: the process once the response is sent; "auto" is inline on Lambda, else background
    ingest_drain_mode: Literal["auto", "inline", "background"] = "auto"
    ingest_drain_budget_seconds: float = 2.0
    #: each step's batch in the inline drain (small: the sender is waiting)
    ingest_drain_batch: int = 50
    drain_budget_seconds: float = 20.0

    # -- outbox and deliveries ------------------------------------------------------------
    outbox_batch_size: int = 200
    delivery_batch_size: int = 500
    lease_seconds: int = 60
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0

    # -- routing --------------------------------------------------------------------------
    #: normal-priority pushes for one user within this window coalesce into one
    batch_window_seconds: int = 60
    #: the digest window (tier rules send some events to free users in a digest)
    digest_window_seconds: int = 3600
    push_daily_cap: int = 50
    #: off: every event its own push (the benchmark's baseline)
    push_coalescing: bool = True

    # -- Supabase Realtime ----------------------------------------------------------------
    #: base URL (defaults to SUPABASE_URL); the broadcast endpoint is <base>/realtime/v1/api/broadcast
    realtime_url: str | None = None
    realtime_topic_prefix: str = "user:"
    #: the plan's messages per second (Free 100, Pro 500)
    realtime_messages_per_second: int = 100
    realtime_batch_size: int = 100
    realtime_timeout_seconds: float = 5.0

    # -- FCM HTTP v1 ----------------------------------------------------------------------
    #: the service account JSON (inline), or a path to it
    fcm_service_account_json: str | None = None
    fcm_service_account_file: str | None = None
    fcm_project_id: str | None = None
    fcm_url: str = "https://fcm.googleapis.com"
    #: overrides the service account's token_uri (tests)
    fcm_token_url: str | None = None
    push_timeout_seconds: float = 5.0
    push_concurrency: int = 32

    # -- APNs (token-based auth) ----------------------------------------------------------
    apns_url: str = "https://api.push.apple.com"
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    #: the .p8 key (PEM), inline or a path
    apns_private_key: str | None = None
    apns_private_key_file: str | None = None
    apns_topic: str | None = None
    #: APNs speaks HTTP/2 only; tests talk HTTP/1.1 to a local fake
    apns_http2: bool = True

    @field_validator("orchestrator_webhook_secrets", mode="before")
    @classmethod
    def _secrets(cls, v: object) -> tuple[str, ...]:
        return csv(v)  # type: ignore[arg-type]

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
