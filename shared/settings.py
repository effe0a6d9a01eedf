"""Typed settings, read on first use.

Precedence: explicit keyword argument, then the environment, then the secret store named
by `EDGEFN_SECRETS` (`shared.secrets`), then the field default.
A missing or malformed value fails fast with the environment variable's name.

    class DashboardSettings(CoreSettings):
        dashboard_ttl_seconds: int = 300

    settings = DashboardSettings.load()          # reads DASHBOARD_TTL_SECONDS, DATABASE_URL ...
    settings = DashboardSettings.load(database_url="postgresql://...")  # explicit wins

We avoid pydantic-settings on purpose: it costs ~130 ms of cold import for what is a
dictionary lookup per field here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator


class ConfigError(RuntimeError):
    """A configuration value is missing or malformed. The message names the variable."""


class Settings(BaseModel):
    """Every field is a configuration key (its environment variable is the field's name in
    upper case, or its alias). The docstring under a field is its description: it is what
    `edgefn config --markdown` writes into docs/configuration.md."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    @classmethod
    def env_name(cls, field: str) -> str:
        info = cls.model_fields[field]
        return info.alias or field.upper()

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **explicit: Any) -> Self:
        if env is None:
            env = _environment()
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            if name in explicit:
                values[name] = explicit[name]
                continue
            raw = env.get(cls.env_name(name))
            # blank is unset: a secret store that keeps no empty value holds " " for an
            # optional provider nobody uses
            if raw is not None and raw.strip() != "":
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                field = str(err["loc"][0]) if err["loc"] else "?"
                var = cls.env_name(field) if field in cls.model_fields else field
                problems.append(f"{var}: {err['msg']}")
            raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def _environment() -> Mapping[str, str]:
    """os.environ, completed by the secret store when EDGEFN_SECRETS names one
    (`shared.secrets`: read once per process, at init)."""
    if not os.environ.get("EDGEFN_SECRETS"):
        return os.environ
    from shared import secrets

    try:
        return secrets.environment()
    except secrets.SecretsError as exc:
        raise ConfigError(f"EDGEFN_SECRETS: {exc}") from None


def csv(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Parse a comma-separated environment value into a tuple of stripped items."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(v.strip() for v in value if v.strip())
    return tuple(v.strip() for v in value.split(",") if v.strip())


#: what supabase-js sends (`functions.invoke()` and the REST client), plus what our routes read
DEFAULT_CORS_ALLOW_HEADERS = (
    "authorization", "apikey", "content-type", "x-client-info", "x-region", "x-supabase-api-version",
    "x-supabase-authorization", "x-api-version", "if-none-match", "idempotency-key",
)


class CoreSettings(Settings):
    """Keys every function reads. Each function subclasses this with only its own keys."""

    # -- Postgres ---------------------------------------------------------------------------
    database_url: str | None = None
    """Postgres connection string. On Supabase, the Supavisor transaction pooler (port 6543);
    handlers never rely on session state, so transaction pooling is safe."""
    database_read_url: str | None = None
    """Optional read replica for read-heavy routes that opt in (DASHBOARD_USE_READ_REPLICA,
    DECK_USE_READ_REPLICA)."""
    db_pool_max: int = 10
    """Most connections one process (one Lambda instance, one Cloud Run container) keeps open."""
    db_connect_timeout_s: float = 5.0
    """Deadline for opening a Postgres connection, in seconds."""
    db_statement_timeout_ms: int = 5000
    """Postgres `statement_timeout` set on every connection, in milliseconds."""

    # -- Redis: TCP (REDIS_URL) or Upstash REST (UPSTASH_REDIS_REST_URL + _TOKEN) ------------
    redis_url: str | None = None
    """Redis over TCP (`redis://` or `rediss://`), for Cloud Run and local runs."""
    upstash_redis_rest_url: str | None = None
    """Upstash Redis REST URL (Lambda); used when REDIS_URL is not set."""
    upstash_redis_rest_token: str | None = None
    """Upstash Redis REST token (secret)."""
    redis_timeout_ms: int = 50
    """Deadline for every Redis call, in milliseconds; past it each route fails open or
    closed as it declares."""
    redis_cold_timeout_ms: int = Field(default=1000, ge=0)
    """Deadline for the Redis calls of a process's first request (a cold start), in
    milliseconds, when longer than REDIS_TIMEOUT_MS: that request also pays one-time costs
    (code run for the first time in a fresh process). Applies only when init reached Redis."""
    key_prefix: str = "edgefn"
    """Prefix of every Redis key, so several deployments (or test runs) can share one Redis."""

    # -- Supabase auth ------------------------------------------------------------------------
    supabase_url: str | None = None
    """The Supabase project URL; the JWKS URL, the token issuer and the Realtime URL derive
    from it."""
    supabase_jwt_secret: str | None = None
    """Legacy HS256 JWT secret (secret). Only where the project still signs tokens with it;
    unset, HS256 tokens are refused."""
    supabase_jwks_url: str | None = None
    """JWKS URL; default `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`."""
    supabase_jwks: str | None = None
    """An inline JWKS document (JSON), instead of fetching one: offline runs and the local
    server."""
    jwt_issuer: str | None = None
    """Expected `iss` claim; default `<SUPABASE_URL>/auth/v1`."""
    jwt_audience: str = "authenticated"
    """Expected `aud` claim."""
    jwt_leeway_seconds: int = 30
    """Clock skew allowed on `exp` and `nbf`, in seconds."""
    jwks_cache_seconds: int = 600
    """How long fetched signing keys are trusted before a refresh, in seconds (at most 600,
    Supabase's own edge cache)."""
    jwks_max_stale_seconds: int = Field(default=600, ge=0)
    """The ceiling on stale signing keys: how long past JWKS_CACHE_SECONDS the last keys
    fetched are still served (at once, while one background refresh runs) when the JWKS
    endpoint is slow or down. Past it, tokens get 503 `AUTH_KEYS_UNAVAILABLE` until a fetch
    succeeds, so a revoked key is accepted at most JWKS_CACHE_SECONDS + this after Supabase
    stops publishing it (20 minutes by default: the window Supabase documents for its own
    JWKS caches to clear)."""
    jwks_refresh_cooldown_seconds: int = 30
    """Least time between two JWKS fetches caused by tokens with an unknown `kid`."""
    supabase_service_role_key: str | None = None
    """The service role key (secret): sent to Supabase Realtime's broadcast API, and accepted
    as the bearer of internal routes such as the orchestrator's `/drain`."""
    health_secret: str | None = None
    """A bearer value (secret) that may call `GET <function>/health?deep=1`, for a monitor
    that holds no service role key; the service role key and a `service_role` token are
    accepted too. Liveness (`/health`) needs nothing."""

    # -- outbound HTTP (JWKS, Realtime, FCM, APNs, Paystack, RevenueCat) ---------------------
    breaker_failure_threshold: int = Field(default=5, ge=1)
    """A provider's circuit breaker opens after this many consecutive failures."""
    breaker_reset_seconds: float = Field(default=30.0, gt=0)
    """An open breaker lets one trial call through after this many seconds."""

    # -- rate limits per tier (requests per window) for routes that don't set their own -----
    rate_limit_anonymous: int = 10
    """Requests per window for callers without a token (identified by client address)."""
    rate_limit_free: int = 100
    """Requests per window for the free tier."""
    rate_limit_paid: int = 500
    """Requests per window for the paid tier."""
    rate_limit_admin: int = 1000
    """Requests per window for the admin tier."""
    rate_limit_window_seconds: int = 60
    """The sliding window of the per-tier limits, in seconds."""

    # -- HTTP edge --------------------------------------------------------------------------
    cors_origins: tuple[str, ...] = ()
    """Comma-separated origins allowed to call from a browser (`https://app.example.com`);
    `*` allows any origin, without credentials. Empty: no cross-origin calls."""
    cors_allow_headers: tuple[str, ...] = DEFAULT_CORS_ALLOW_HEADERS
    """Comma-separated request headers a browser may send cross-origin (answered in
    `Access-Control-Allow-Headers`). The default covers every header supabase-js sends."""
    cors_max_age: int = 600
    """How long a browser may cache a preflight answer, in seconds."""
    trusted_proxy_header: str | None = None
    """Header the trusted proxy sets with the client address (`cloudfront-viewer-address`,
    `x-forwarded-for`). Unset: the socket peer is the client."""
    trusted_proxy_hops: int = 1
    """With `x-forwarded-for`: how many trusted proxies append to it; the client is that many
    entries from the right."""
    origin_verify_header: str = "x-origin-verify"
    """Header the CDN adds to every request it forwards (CloudFront's `OriginCustomHeaders`
    in infra/cdn/cloudfront.yaml), carrying one of ORIGIN_VERIFY_SECRETS."""
    origin_verify_secrets: tuple[str, ...] = Field(default=(), validate_default=True)
    """The value the CDN sends in ORIGIN_VERIFY_HEADER (secret), each at least 32 characters;
    two, comma-separated, while the secret is rotated. Set: a request without a matching
    header is refused (403 `ORIGIN_NOT_VERIFIED`) before anything else runs, so
    TRUSTED_PROXY_HEADER is believed only on requests that came through the CDN. Required
    when TRUSTED_PROXY_HEADER is `cloudfront-viewer-address`, which any direct caller could
    set."""

    # -- observability ----------------------------------------------------------------------
    sentry_dsn: str | None = None
    """Enables Sentry error reporting (sentry-sdk is imported only then)."""
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of requests Sentry traces (0 to 1)."""
    edgefn_stage: str = "dev"
    """The deployment's stage (`dev`, `prod` ...): Sentry's environment. The deploy files set it."""
    edgefn_access_log: bool = True
    """One JSON log line per request on stderr."""
    edgefn_metrics: Literal["off", "emf"] = "off"
    """`emf`: write CloudWatch EMF metric lines on stdout (`shared/emf.py`): one per Lambda
    invocation, one a minute elsewhere. The deploy files set it."""
    scheduler_secret: str | None = None
    """Shared secret (secret) a scheduler sends in `X-Scheduler-Secret` to run the function's
    scheduled work over HTTP (`POST <function>/internal/scheduled`, Cloud Run); unset, that
    route does not exist."""

    @field_validator("cors_origins", "cors_allow_headers", "origin_verify_secrets", mode="before")
    @classmethod
    def _csv(cls, v: object) -> tuple[str, ...]:
        return csv(v)  # type: ignore[arg-type]

    @field_validator("origin_verify_secrets")
    @classmethod
    def _origin_secrets(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if len(v) > 2:
            raise ValueError("at most two values: the current secret and, while rotating, the next")
        if any(len(s) < 32 for s in v):
            raise ValueError("each value must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        proxy = (info.data.get("trusted_proxy_header") or "").lower()
        if proxy == "cloudfront-viewer-address" and not v:
            raise ValueError(
                "required when TRUSTED_PROXY_HEADER is cloudfront-viewer-address: without it a "
                "direct call to the function URL picks its own client address"
            )
        return v

    @property
    def issuer(self) -> str | None:
        if self.jwt_issuer:
            return self.jwt_issuer
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/auth/v1"
        return None

    @property
    def jwks_url(self) -> str | None:
        if self.supabase_jwks_url:
            return self.supabase_jwks_url
        if self.supabase_url:
            return self.supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"
        return None

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if value in (None, ""):
            raise ConfigError(f"{self.env_name(name)} is not set")
        return str(value)
