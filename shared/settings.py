"""Typed settings, read on first use.

Precedence: explicit keyword argument, then the environment, then the field default.
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
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(RuntimeError):
    """A configuration value is missing or malformed. The message names the variable."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def env_name(cls, field: str) -> str:
        info = cls.model_fields[field]
        return info.alias or field.upper()

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **explicit: Any) -> Self:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            if name in explicit:
                values[name] = explicit[name]
                continue
            raw = env.get(cls.env_name(name))
            if raw is not None and raw != "":
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


def csv(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Parse a comma-separated environment value into a tuple of stripped items."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(v.strip() for v in value if v.strip())
    return tuple(v.strip() for v in value.split(",") if v.strip())


class CoreSettings(Settings):
    """Keys every function reads. Each function subclasses this with only its own keys."""

    # Postgres (Supabase: the Supavisor transaction pooler, port 6543)
    database_url: str | None = None
    database_read_url: str | None = None
    db_pool_max: int = 10
    db_connect_timeout_s: float = 5.0
    db_statement_timeout_ms: int = 5000
    # Redis: TCP (REDIS_URL) or Upstash REST (UPSTASH_REDIS_REST_URL + _TOKEN)
    redis_url: str | None = None
    upstash_redis_rest_url: str | None = None
    upstash_redis_rest_token: str | None = None
    redis_timeout_ms: int = 50
    key_prefix: str = "edgefn"
    # Supabase auth
    supabase_url: str | None = None
    supabase_jwt_secret: str | None = None
    supabase_jwks_url: str | None = None
    supabase_jwks: str | None = None  # inline JWKS JSON (offline / tests / local server)
    jwt_issuer: str | None = None
    jwt_audience: str = "authenticated"
    jwt_leeway_seconds: int = 30
    jwks_cache_seconds: int = 600
    jwks_refresh_cooldown_seconds: int = 30
    supabase_anon_key: str | None = None
    supabase_service_role_key: str | None = None
    # outbound HTTP (JWKS, Realtime, FCM, APNs): a circuit breaker per provider opens after
    # this many consecutive failures and lets one trial call through after the reset time
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_reset_seconds: float = Field(default=30.0, gt=0)
    # rate limits per tier (requests per window) for routes that don't set their own
    rate_limit_anonymous: int = 10
    rate_limit_free: int = 100
    rate_limit_paid: int = 500
    rate_limit_admin: int = 1000
    rate_limit_window_seconds: int = 60
    # HTTP edge
    cors_origins: tuple[str, ...] = ()
    cors_max_age: int = 600
    #: header the trusted proxy sets with the client address (e.g. cloudfront-viewer-address,
    #: x-forwarded-for). Unset: the socket peer is the client.
    trusted_proxy_header: str | None = None
    trusted_proxy_hops: int = 1
    sentry_dsn: str | None = None
    stage: str = "dev"

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _csv(cls, v: object) -> tuple[str, ...]:
        return csv(v)  # type: ignore[arg-type]

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
