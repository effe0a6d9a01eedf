"""Supabase access tokens verified locally: no network call per request.

- ES256 / RS256 against the project's JWKS (`<SUPABASE_URL>/auth/v1/.well-known/jwks.json`),
  fresh for `jwks_cache_seconds` (Supabase's own edge caches 10 minutes), then served stale
  for up to `jwks_max_stale_seconds` more while one background refresh runs (`JWKSCache`):
  a slow or hanging JWKS endpoint never holds up a request whose key is known. Refetched
  once on an unknown `kid`, with a cool-down so a flood of bad `kid`s cannot hammer it.
- HS256 only where the project's JWT secret is configured.
- Checked: signature, `exp` / `nbf` (with leeway), `iss`, `aud`, `role`, `sub`.
- The verified principal is cached in-process by token hash until the token's `exp`.

`verify()` returns a decision (a Principal, or None for the anon key); it raises
`Unauthenticated` with a stable code on anything else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import jwt
from jwt import PyJWK

from shared import errors
from shared.context import Principal
from shared.envelope import loads
from shared.ratelimit import USER_TIERS
from shared.settings import CoreSettings

if TYPE_CHECKING:
    from shared.context import RequestContext

ASYMMETRIC = frozenset({"ES256", "RS256"})
USER_ROLES = frozenset({"authenticated", "service_role"})


def _unauth(code: str, message: str) -> errors.Unauthenticated:
    desc = message.replace('"', "'")
    return errors.Unauthenticated(
        message,
        code=code,
        headers={"WWW-Authenticate": f'Bearer realm="edgefn", error="invalid_token", error_description="{desc}"'},
    )


def token_hash(token: str) -> bytes:
    """The principal cache's key: a 128-bit digest, so raw tokens are not kept as keys."""
    return hashlib.blake2b(token.encode(), digest_size=16).digest()


class PrincipalCache:
    """Bounded LRU of verified principals, each valid until its token's `exp`.
    Operations are synchronous dict moves, so concurrent asyncio requests cannot interleave
    inside them; a lock guards the threaded case (uvicorn with threads, tests)."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[bytes | str, Principal] = OrderedDict()

    def get(self, key: bytes | str) -> Principal | None:
        p = self._data.get(key)
        if p is None:
            return None
        if p.expires_at <= self.clock():
            self._data.pop(key, None)
            return None
        self._data.move_to_end(key)
        return p

    def put(self, key: bytes | str, principal: Principal) -> None:
        self._data[key] = principal
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class JWKSCache:
    """Signing keys by `kid`, fetched under a deadline (`shared.http1`), one fetch at a time.

    A request never waits for a fetch while the keys it needs are usable:

    - younger than `max_age`: served;
    - older, up to `max_age + max_stale` (the ceiling): still served at once, while one
      background refresh runs (a failed one is retried at most once a second, only when a
      request needs the keys);
    - past the ceiling, or before the first fetch: requests wait for the one fetch in
      flight (at most `timeout`), and get 503 `AUTH_KEYS_UNAVAILABLE` if it fails. A
      revoked key therefore stops being accepted at most `max_age + max_stale` after
      Supabase stops publishing it, however long the JWKS endpoint is down.

    A token with an unknown `kid` waits for the fetch in flight, or starts one, at most
    once per `cooldown` while the keys are fresh, so a flood of made-up `kid`s costs one
    fetch per cool-down. Static keys (an inline JWKS) never expire and are never fetched.
    """

    def __init__(
        self,
        url: str | None,
        *,
        static_jwks: dict[str, Any] | None = None,
        max_age: float = 600,
        max_stale: float = 600,
        cooldown: float = 30,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        http: Any = None,
    ) -> None:
        self.url = url
        self.max_age = max_age
        self.max_stale = max_stale
        self.cooldown = cooldown
        self.timeout = timeout
        self.clock = clock
        self.http = http
        self.keys: dict[str, PyJWK] = {}
        self.fetched_at = float("-inf")
        self.last_attempt = float("-inf")
        self.fetch_count = 0
        self._inflight: asyncio.Task[None] | None = None
        self.static = static_jwks is not None
        if static_jwks is not None:
            self.keys = self._parse(static_jwks)

    @staticmethod
    def _parse(doc: dict[str, Any]) -> dict[str, PyJWK]:
        keys: dict[str, PyJWK] = {}
        for jwk in doc.get("keys", []):
            if jwk.get("use", "sig") != "sig" or jwk.get("alg") not in ASYMMETRIC:
                continue
            try:
                keys[jwk.get("kid", "")] = PyJWK(jwk)
            except Exception:
                continue
        return keys

    async def get(self, kid: str) -> PyJWK | None:
        key = self.keys.get(kid)
        if self.static or self.url is None:
            return key
        age = self.clock() - self.fetched_at
        if key is not None and age < self.max_age:
            return key
        if key is not None and age < self.max_age + self.max_stale:
            self._refresh(min_gap=1.0)  # stale: serve now, refresh in the background
            return key
        # an unknown kid, no keys yet, or keys past the ceiling: wait for a fetch
        task = self._refresh(min_gap=self.cooldown if age < self.max_age else 1.0)
        if task is not None:
            await asyncio.shield(task)  # a waiter that gives up does not cancel the fetch
        if self.clock() - self.fetched_at >= self.max_age + self.max_stale:
            raise errors.ServiceUnavailable("the signing keys could not be fetched", code="AUTH_KEYS_UNAVAILABLE")
        return self.keys.get(kid)

    def _refresh(self, min_gap: float) -> asyncio.Task[None] | None:
        """The fetch in flight, else a new one if the last attempt is at least `min_gap`
        seconds old, else None."""
        loop = asyncio.get_running_loop()
        task = self._inflight
        if task is not None and not task.done() and task.get_loop() is loop:
            return task
        if self.clock() - self.last_attempt < min_gap:
            return None
        self.last_attempt = self.clock()
        self.fetch_count += 1
        self._inflight = task = loop.create_task(self._fetch())
        return task

    async def _fetch(self) -> None:
        try:
            if self.http is None:
                from shared.http1 import Client

                self.http = Client(timeout=self.timeout)
            async with asyncio.timeout(self.timeout):
                resp = await self.http.get(self.url, timeout=self.timeout)
                resp.raise_for_status()
            self.keys = self._parse(loads(resp.content))
            self.fetched_at = self.clock()
        except Exception:  # noqa: BLE001 - keep the keys we had; get() decides what to serve
            return


class TokenVerifier:
    def __init__(
        self,
        settings: CoreSettings,
        *,
        clock: Callable[[], float] = time.time,
        http: Any = None,
        cache: PrincipalCache | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.issuer = settings.issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_seconds
        self.secret = settings.supabase_jwt_secret
        static = loads(settings.supabase_jwks) if settings.supabase_jwks else None
        self.jwks = JWKSCache(
            settings.jwks_url,
            static_jwks=static,
            max_age=min(settings.jwks_cache_seconds, 600),
            max_stale=settings.jwks_max_stale_seconds,
            cooldown=settings.jwks_refresh_cooldown_seconds,
            http=http,
        )
        self.cache = cache or PrincipalCache(clock=clock)
        self.verifications = 0

    async def verify(self, token: str) -> Principal | None:
        """A Principal for a user or service token; None for the project's anon key."""
        key = token_hash(token)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        claims = await self._decode(token)
        role = claims.get("role")
        if role == "anon":
            return None
        if role not in USER_ROLES:
            raise _unauth("TOKEN_ROLE_NOT_ALLOWED", f"role {role!r} is not accepted")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            if role == "service_role":
                sub = "service_role"
            else:
                raise _unauth("TOKEN_INVALID", "token has no subject")
        app_meta = claims.get("app_metadata") or {}
        tier = app_meta.get("tier") if isinstance(app_meta, dict) else None
        principal = Principal(
            user_id=sub,
            role=role,
            session_id=claims.get("session_id"),
            # only a tier we know: anything else is as if the token named none (the limiter
            # then reads Redis or the database)
            tier_hint=tier if isinstance(tier, str) and tier in USER_TIERS else None,
            expires_at=int(claims["exp"]),
            claims=claims,
        )
        self.cache.put(key, principal)
        return principal

    async def _decode(self, token: str) -> dict[str, Any]:
        self.verifications += 1
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauth("TOKEN_MALFORMED", "the token is not a JWT") from None
        alg = header.get("alg")
        if alg in ASYMMETRIC:
            kid = header.get("kid") or ""
            jwk = await self.jwks.get(kid)
            if jwk is None:
                raise _unauth("TOKEN_KEY_UNKNOWN", "the token was signed by an unknown key")
            if jwk.algorithm_name != alg:
                raise _unauth("TOKEN_ALG_NOT_ALLOWED", "the token's algorithm does not match its key")
            verify_key: Any = jwk.key
        elif alg == "HS256" and self.secret:
            verify_key = self.secret
        else:
            raise _unauth("TOKEN_ALG_NOT_ALLOWED", f"algorithm {alg!r} is not accepted")
        try:
            return jwt.decode(
                token,
                verify_key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "role"], "verify_iss": self.issuer is not None},
            )
        except jwt.ExpiredSignatureError:
            raise _unauth("TOKEN_EXPIRED", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _unauth("TOKEN_NOT_YET_VALID", "the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise _unauth("TOKEN_ISSUER_MISMATCH", "the token was issued for another project") from None
        except jwt.InvalidAudienceError:
            raise _unauth("TOKEN_AUDIENCE_MISMATCH", "the token's audience is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauth("TOKEN_INVALID", f"the token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise _unauth("TOKEN_INVALID", "the token's signature or claims are invalid") from None


def bearer_token(headers: Any) -> str | None:
    """The caller's token: `Authorization: Bearer`, or `x-supabase-authorization` where a CDN
    with origin access control overwrites `Authorization`."""
    for name in ("x-supabase-authorization", "authorization"):
        value = headers.get(name)
        if value:
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def secret_matches(offered: str | bytes | None, secrets: Iterable[str | None]) -> bool:
    """Whether `offered` is one of the configured `secrets` (unset ones skipped), in
    constant time: every value is compared, over SHA-256 digests, so neither which one
    matched nor a secret's length shows in the time taken."""
    if offered is None:
        return False
    got = hashlib.sha256(offered.encode() if isinstance(offered, str) else offered).digest()
    matched = False
    for secret in secrets:
        if secret:
            matched |= hmac.compare_digest(got, hashlib.sha256(secret.encode()).digest())
    return matched


async def require_service(ctx: RequestContext, secrets: Iterable[str | None], what: str) -> None:
    """For internal routes (the orchestrator's drain, deep health): the bearer must be one
    of `secrets` or a valid `service_role` token; a user's token is not enough.
    401 `AUTH_REQUIRED` without a bearer, `SECRET_INVALID` with a wrong one."""
    token = bearer_token(ctx.headers)
    if token is None:
        raise errors.Unauthenticated(f"{what} needs the service secret", code="AUTH_REQUIRED")
    if secret_matches(token, secrets):
        return
    try:
        principal = await ctx.services.verifier.verify(token)
    except errors.AppError:
        principal = None
    if principal is None or not principal.is_service:
        raise errors.Unauthenticated(f"{what} needs the service secret", code="SECRET_INVALID")
