"""The process's collaborators, built lazily on first use and kept for the warm container:
the Postgres pool, the key-value store, the token verifier, an outbound HTTP client and
the R2 client. Tests pass their own in; nothing here is a hidden global."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.settings import ConfigError, CoreSettings

if TYPE_CHECKING:
    from shared.auth import TokenVerifier
    from shared.cache import ResponseCache
    from shared.db import Database
    from shared.kv import KV
    from shared.ratelimit import RateLimiter
    from shared.resilience import OutboundHTTP


class Services:
    def __init__(
        self,
        settings: CoreSettings,
        *,
        db: Database | None = None,
        kv: KV | None = None,
        verifier: TokenVerifier | None = None,
        storage: Any = None,
        http: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._db = db
        self._kv = kv
        self._verifier = verifier
        self._storage = storage
        self._http = http
        self._limiter: RateLimiter | None = None
        self._cache: ResponseCache | None = None
        self._outbound: OutboundHTTP | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            from shared.db import Database

            if not self.settings.database_url:
                raise ConfigError("DATABASE_URL is not set")
            self._db = Database.from_settings(self.settings)
        return self._db

    @property
    def kv(self) -> KV:
        if self._kv is None:
            from shared.kv import kv_from_settings

            self._kv = kv_from_settings(self.settings)
        return self._kv

    @property
    def verifier(self) -> TokenVerifier:
        if self._verifier is None:
            from shared.auth import TokenVerifier

            self._verifier = TokenVerifier(self.settings, clock=self.clock)
        return self._verifier

    @property
    def rate_limiter(self) -> RateLimiter:
        if self._limiter is None:
            from shared.ratelimit import RateLimiter

            self._limiter = RateLimiter(self.kv)
        return self._limiter

    @property
    def response_cache(self) -> ResponseCache:
        if self._cache is None:
            from shared.cache import ResponseCache

            self._cache = ResponseCache(self.kv)
        return self._cache

    async def tier_from_db(self, user_id: str) -> str | None:
        """The rate limiter's last fallback: the tier the webhooks recorded."""
        row = await self.db.fetchrow("select tier from public.user_tiers where user_id = %s", (user_id,), service=True)
        return row["tier"] if row else None

    @property
    def storage(self) -> Any:
        if self._storage is None:
            from shared.storage import Storage

            self._storage = Storage.from_settings(self.settings)
        return self._storage

    @property
    def http(self) -> Any:
        if self._http is None:
            import httpx

            from shared import tls

            self._http = tls.client(timeout=httpx.Timeout(5.0, connect=2.0))
        return self._http

    @property
    def outbound(self) -> OutboundHTTP:
        """Outbound HTTP with a timeout on every call and a circuit breaker per provider."""
        if self._outbound is None:
            from shared.resilience import OutboundHTTP

            self._outbound = OutboundHTTP(
                self.http, failure_threshold=self.settings.breaker_failure_threshold,
                reset_timeout=self.settings.breaker_reset_seconds,
            )
        return self._outbound

    async def start(self, dependencies: tuple[str, ...] = ()) -> None:
        """Build, in a worker thread, what is slow to build, so that no request builds it on
        the event loop: the TLS context of outbound HTTPS (45-70 ms) and, for a function
        that uses storage, boto3's S3 client (~250 ms with its import). Called once at
        start-up (the ASGI lifespan); anything not built here is still built on first use."""
        import asyncio

        await asyncio.to_thread(self._build_slow_clients, dependencies)

    def _build_slow_clients(self, dependencies: tuple[str, ...]) -> None:
        from shared import tls

        tls.warm()
        # what the first request would otherwise import on the loop (the cold-start budget
        # keeps these imports lazy at module level; a server imports them here)
        if "database" in dependencies:
            import psycopg_pool  # noqa: F401

            import shared.db  # noqa: F401
        if "redis" in dependencies:
            from shared.kv import kv_from_settings  # noqa: F401
        if "storage" in dependencies:
            try:
                _ = self.storage.client
            except ConfigError:  # not configured: its routes answer STORAGE_NOT_CONFIGURED
                pass

    async def aclose(self) -> None:
        if self._db is not None:
            await self._db.close()
        if self._kv is not None:
            await self._kv.aclose()
        if self._http is not None:
            await self._http.aclose()
