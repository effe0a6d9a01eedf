"""The per-route middleware chain, composed once per cold start:

    body cap -> auth -> query -> rate limit -> body -> edge cache -> handler

Nothing reads the body before the caller is known and admitted: a declared size above the
route's cap is refused first (no work, nothing read), then the token is verified and the
rate limit decides; only then is the body read, capped, and validated. A request whose
token is missing or invalid is counted against its address's anonymous limit before it
gets its 401, so a flood of unauthenticated requests meets a 429 answered from memory.

Auth and rate limiting are checks, `async (ctx, route) -> None`, run one after the other:
they answer early by raising a domain error (`shared.app` maps those to status codes in
one place) and record what they learnt on the context. The edge cache is the one step
around the handler, `async (ctx, route, call_next) -> Response`: it may answer without
calling it. Checks do not wrap what follows them, so a request waiting on Redis or the
database resumes through as few coroutine frames as possible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from shared import errors
from shared.auth import TokenVerifier, bearer_token
from shared.cache import CachePolicy, Entry, Payload, ResponseCache, decode_entry, etag_matches
from shared.context import RequestContext
from shared.envelope import JSONResponse
from shared.inputs import DEFAULT_MAX_BODY, check_declared_size, parse_json_body, parse_model
from shared.kv import KVCommandError, KVUnavailable
from shared.observability import json_log, metrics
from shared.ratelimit import DEFAULT_LIMITS, Decision, RateLimiter, RateRule
from shared.settings import CoreSettings

if TYPE_CHECKING:
    from shared.app import RouteSpec
    from shared.services import Services

Next = Callable[[], Awaitable[Response]]


def client_ip(ctx: RequestContext, settings: CoreSettings) -> str:
    """The client address for anonymous rate limiting. A forwarding header is believed only
    when the deployment says a trusted proxy sets it; otherwise a client could pick its own
    identity. `cloudfront-viewer-address` is set whole by CloudFront, so the settings refuse
    it without ORIGIN_VERIFY_SECRETS, and `shared.origin` has refused every request that did
    not come through CloudFront before this runs; `x-forwarded-for` is appended to by the
    proxy (Cloud Run's front end), so the entries counted from the right are its own."""
    header = settings.trusted_proxy_header
    if header:
        value = ctx.headers.get(header.lower())
        if value:
            if header.lower() == "cloudfront-viewer-address":
                # "198.51.100.10:46532" or "[2001:db8::1]:46532"
                host = value.rsplit(":", 1)[0]
                return host.strip("[]")
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if parts:
                # the proxy appends the address it saw; count hops from the right
                idx = max(len(parts) - settings.trusted_proxy_hops, 0)
                return parts[idx]
    client = ctx.request.client
    return client.host if client else "unknown"


class AuthStep:
    def __init__(self, services: Services) -> None:
        self.services = services

    @property
    def verifier(self) -> TokenVerifier:
        return self.services.verifier

    async def __call__(self, ctx: RequestContext, route: RouteSpec) -> None:
        if route.auth != "public":
            token = bearer_token(ctx.headers)
            if token is not None:
                ctx.principal = await self.verifier.verify(token)
            if ctx.principal is None and route.auth == "required":
                raise errors.Unauthenticated(
                    "a user access token is required (Authorization: Bearer <token>)",
                    code="AUTH_REQUIRED",
                    headers={"WWW-Authenticate": 'Bearer realm="edgefn"'},
                )
            if ctx.principal is not None:
                ctx.request.scope["state"]["user_id"] = ctx.principal.user_id
                if ctx.principal.is_service:
                    ctx.tier = "admin"
                else:
                    ctx.tier = ctx.principal.tier_hint or "free"


class RateLimitStep:
    """Tier lookup and the limit decision in ONE Redis round trip (EVALSHA). On a cached
    GET the same round trip also reads the cache entry and takes the single-flight lock."""

    def __init__(self, services: Services, default_rule: RateRule) -> None:
        self.services = services
        self.default_rule = default_rule
        self._tasks: set[asyncio.Task[Any]] = set()

    # resolved on first use: a function whose routes are all public never needs Redis
    @property
    def limiter(self) -> RateLimiter:
        return self.services.rate_limiter

    @property
    def cache(self) -> ResponseCache:
        return self.services.response_cache

    def rule_for(self, route: RouteSpec) -> RateRule | None:
        if route.rate is not None:
            return route.rate
        return None if route.auth == "public" else self.default_rule

    async def __call__(self, ctx: RequestContext, route: RouteSpec) -> None:
        rule = self.rule_for(route)
        if rule is None:
            return
        p = ctx.principal
        identity = p.user_id if p is not None else "ip:" + ctx.client_ip
        hint = ctx.tier if p is not None else "anonymous"
        cost = rule.cost(ctx) if callable(rule.cost) else rule.cost
        blocked_key = f"{rule.name}:{identity}"
        held = self.limiter.blocked.get(blocked_key)
        if held is not None:
            metrics.incr("ratelimit.blocked_local")
            raise _limited(held)
        cache_keys = cache_keys_for(self.cache, ctx, route)
        try:
            decision = await self.limiter.check(
                rule, identity, user_id=p.user_id if p else None, tier_hint=hint, cost=cost,
                cache_keys=cache_keys, lock_ms=route.cache.lock_ms if route.cache else 5000,
            )
        except KVUnavailable as exc:
            json_log.log(
                "warning", "rate limiter unavailable", route=ctx.route_name, request_id=ctx.request_id,
                policy=route.redis_failure, error=repr(exc.__cause__ or exc),
            )
            if route.redis_failure == "closed":
                metrics.incr("ratelimit.fail_closed")
                raise errors.ServiceUnavailable(
                    "rate limiting is unavailable; try again shortly", code="RATE_LIMITER_UNAVAILABLE",
                    headers={"Retry-After": "1"},
                ) from None
            metrics.incr("ratelimit.fail_open")
            ctx.state["cache_bypass"] = True
            return
        ctx.tier = decision.tier if p is not None else "anonymous"
        if p is not None and not decision.tier_from_redis and not p.is_service:
            self._remember_tier(p.user_id, p.tier_hint)
        self._apply(ctx, decision, blocked_key)
        if cache_keys is not None:
            ctx.state["decision"] = decision
            ctx.state["cache_keys"] = cache_keys

    async def refusing(self, ctx: RequestContext, route: RouteSpec) -> None:
        """Count a request about to be refused for its token (missing or invalid) against
        its address's anonymous limit; a 429 replaces the 401 once that is spent. When
        Redis is unreachable the 401 goes out anyway: the request is refused either way."""
        rule = self.rule_for(route)
        if rule is None:
            return
        identity = "ip:" + ctx.client_ip
        blocked_key = f"{rule.name}:{identity}"
        held = self.limiter.blocked.get(blocked_key)
        if held is not None:
            metrics.incr("ratelimit.blocked_local")
            raise _limited(held)
        try:
            decision = await self.limiter.check(rule, identity, tier_hint="anonymous")
        except KVUnavailable:
            metrics.incr("ratelimit.fail_open")
            return
        self._apply(ctx, decision, blocked_key)

    def _apply(self, ctx: RequestContext, decision: Decision, blocked_key: str) -> None:
        """The decision's headers and metadata; a refusal is remembered until its reset."""
        ctx.response_headers.update(decision.headers())
        ctx.metadata["rate_limit"] = {"limit": decision.limit, "remaining": max(decision.remaining, 0), "reset": decision.reset_seconds}
        if not decision.allowed:
            self.limiter.blocked.put(blocked_key, decision.retry_after if decision.retry_after > 0 else decision.reset_seconds, decision)
            metrics.incr("ratelimit.limited")
            raise _limited(decision)

    def _remember_tier(self, user_id: str, hint: str | None) -> None:
        """Redis had no tier: store the token's, else the database's, off the hot path.
        (The token's app_metadata can lag a subscription change by up to its lifetime; the
        webhooks write the authoritative tier into Redis, which wins over both.)"""

        async def store() -> None:
            try:
                tier = hint
                if tier is None:
                    tier = await self.services.tier_from_db(user_id)
                await self.limiter.set_tier(user_id, tier or "free", ttl=3600, only_if_absent=True)
            except Exception as exc:  # best effort; the next request tries again
                json_log.log("warning", "tier fallback failed", error=repr(exc))

        task = asyncio.get_running_loop().create_task(store())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _limited(decision: Decision) -> errors.RateLimited:
    msg = (
        f"rate limit of {decision.limit} per window exceeded for tier {decision.tier}"
        if decision.retry_after >= 0
        else f"this request costs more than the {decision.tier} tier's limit of {decision.limit}"
    )
    return errors.RateLimited(msg, code="RATE_LIMITED", headers=decision.headers(),
                              details={"tier": decision.tier, "limit": decision.limit, "retry_after": decision.retry_after})


def cache_keys_for(cache: ResponseCache, ctx: RequestContext, route: RouteSpec) -> tuple[str, str, str] | None:
    policy = route.cache
    if policy is None or ctx.request.method not in ("GET", "HEAD"):
        return None
    principal = "public" if policy.scope == "public" else (ctx.principal.user_id if ctx.principal else "ip:" + ctx.client_ip)
    params = ctx.query.model_dump(mode="json") if ctx.query is not None else dict(ctx.query_params)
    params.update(ctx.path_params)
    scope = policy.version(ctx) if policy.version is not None else None
    return cache.keys_for(ctx.route_name, principal, params, scope)


class EdgeCacheStep:
    """Serve fresh entries (304 on a matching If-None-Match) without running the handler;
    on a miss run it once (single flight) and store the result; serve stale on outage."""

    def __init__(self, services: Services) -> None:
        self.services = services

    @property
    def limiter(self) -> RateLimiter:
        return self.services.rate_limiter

    @property
    def cache(self) -> ResponseCache:
        return self.services.response_cache

    async def __call__(self, ctx: RequestContext, route: RouteSpec, call_next: Next) -> Response:
        policy = route.cache
        if policy is None or ctx.request.method not in ("GET", "HEAD"):
            return await call_next()
        if ctx.state.get("cache_bypass"):
            return self._finish(ctx, policy, await call_next(), "bypass")
        decision: Decision | None = ctx.state.get("decision")
        keys = ctx.state.get("cache_keys") or cache_keys_for(self.cache, ctx, route)
        assert keys is not None
        version_key, entry_key, lock_key = keys
        if decision is None:  # a cached route without a rate limit: one lookup of its own
            try:
                decision = await self.limiter.check(NO_LIMIT, "-", cache_keys=keys, limit=False, lock_ms=policy.lock_ms)
            except KVUnavailable:
                return self._finish(ctx, policy, await call_next(), "bypass")
        entry = decode_entry(decision.entry)
        if entry is not None and entry.is_fresh(decision.version, decision.now_ms):
            return self._serve(ctx, policy, entry.payload, entry.etag, "hit")
        if not decision.lock:
            # shared with the request computing it: "stale" when that one served stale
            try:
                shared = await self.cache.wait_for_result(
                    entry_key, lock_key, decision.version, decision.now_ms, policy.lock_ms // 3
                )
            except KVUnavailable:
                shared = None
            if shared is not None:
                return self._serve(ctx, policy, *shared)
        return await self._compute(ctx, route, policy, call_next, decision, entry, keys)

    async def _compute(
        self, ctx: RequestContext, route: RouteSpec, policy: CachePolicy, call_next: Next,
        decision: Decision, stale: Entry | None, keys: tuple[str, str, str],
    ) -> Response:
        _, entry_key, lock_key = keys
        future: asyncio.Future[tuple[Payload, str, str]] = asyncio.get_running_loop().create_future()
        self.cache._inflight[entry_key] = future
        stored = False
        try:
            try:
                response = await call_next()
            except errors.ServiceUnavailable:
                if stale is not None:
                    future.set_result((stale.payload, stale.etag, "stale"))
                    return self._serve(ctx, policy, stale.payload, stale.etag, "stale")
                raise
            if "result" not in ctx.state or response.status_code != route.status_code:
                return response
            payload = Payload.of(
                ctx.state["result"], {k: v for k, v in ctx.metadata.items() if k not in DYNAMIC_METADATA}
            )
            etag = payload.etag()
            future.set_result((payload, etag, "hit"))
            try:
                await self.cache.store(entry_key, lock_key if decision.lock else None, decision.version, decision.now_ms, policy, payload, etag)
                stored = True
            except (KVUnavailable, KVCommandError) as exc:
                json_log.log("warning", "response cache store failed", route=ctx.route_name, error=repr(exc))
            return self._serve(ctx, policy, payload, etag, "miss")
        finally:
            if not future.done():
                future.set_exception(errors.ServiceUnavailable("the cached computation failed"))
                future.exception()  # retrieved: nobody may be waiting
            self.cache._inflight.pop(entry_key, None)
            if decision.lock and not stored:
                try:
                    await self.cache.release(lock_key)
                except KVUnavailable:
                    pass

    def _serve(self, ctx: RequestContext, policy: CachePolicy, payload: Payload, etag: str, status: str) -> Response:
        metrics.incr(f"cache.{status}")  # cache.hit / cache.miss / cache.stale (EMF)
        # every header in one dict, given to the response at construction (cheaper than
        # editing a built response's header list)
        headers = {
            **ctx.response_headers,
            "ETag": etag,
            "X-Cache-Status": status,
            "Cache-Control": policy.cache_control(),
            "Vary": policy.vary(),
        }
        if etag_matches(ctx.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        meta = {**payload.metadata, **{k: v for k, v in ctx.metadata.items() if k in DYNAMIC_METADATA}}
        meta["cache_status"] = status
        return JSONResponse(payload.envelope(meta), headers=headers)

    @staticmethod
    def _finish(ctx: RequestContext, policy: CachePolicy, resp: Response, status: str | None) -> Response:
        """Cache headers on a response the cache did not build (bypass)."""
        if status is not None:
            resp.headers["X-Cache-Status"] = status
        if resp.status_code in (200, 304):
            resp.headers["Cache-Control"] = policy.cache_control()
            for v in policy.vary().split(", "):
                resp.headers.add_vary_header(v)
        return resp


DYNAMIC_METADATA = frozenset({"rate_limit", "cache_status"})
NO_LIMIT = RateRule(name="none", window_seconds=1)


class Pipeline:
    """body cap -> auth -> query -> rate limit (+ cache lookup, same round trip) -> body ->
    edge cache -> handler."""

    def __init__(self, settings: Any, services: Services) -> None:
        self.settings = settings
        self.services = services
        self.auth = AuthStep(services)
        self.rate = RateLimitStep(services, settings_rule(settings))
        self.cache = EdgeCacheStep(services)

    async def run(self, ctx: RequestContext, route: RouteSpec, endpoint: Next) -> Response:
        body_cap = route.max_body if route.max_body is not None else (None if route.raw_body else DEFAULT_MAX_BODY)
        if body_cap is not None:
            check_declared_size(ctx.headers, body_cap)
        ctx.client_ip = client_ip(ctx, self.settings)
        try:
            await self.auth(ctx, route)
        except errors.Unauthenticated:
            await self.rate.refusing(ctx, route)
            raise
        if route.query is not None:
            ctx.query = parse_model(route.query, dict(ctx.query_params), "query")
        await self.rate(ctx, route)
        if route.body is not None and not route.raw_body:
            assert body_cap is not None
            ctx.body = await parse_json_body(ctx.request, route.body, body_cap)
        return await self.cache(ctx, route, endpoint)


def settings_rule(settings: Any) -> RateRule:
    limits = {t: int(getattr(settings, f"rate_limit_{t}", DEFAULT_LIMITS[t])) for t in DEFAULT_LIMITS}
    return RateRule(name="requests", limits=limits, window_seconds=int(getattr(settings, "rate_limit_window_seconds", 60)))
