"""Outbound HTTP that cannot hang a request or hammer a provider that is down.

- every call has a timeout (connect and total);
- a circuit breaker per provider: after `failure_threshold` consecutive failures (transport
  errors, timeouts, 5xx) it opens and calls fail at once with `CircuitOpen` for
  `reset_timeout` seconds; then one trial call is let through (half-open): success closes
  it, failure opens it again. 4xx answers are the caller's problem, not the provider's
  health, and 429 neither opens nor closes it (the caller backs off);
- no retries that sleep inside a request: retrying is the caller's decision (the outbox
  retries across invocations), and `Backoff` says how long to wait.

    http = OutboundHTTP(client)                     # one per warm container
    resp = await http.request("fcm", "POST", url, json=msg, timeout=3.0)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared import errors


class CircuitOpen(errors.ServiceUnavailable):
    code = "CIRCUIT_OPEN"
    default_message = "the provider is failing; calls are paused"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.reset_timeout:
            return "half-open"
        return "open"

    def before_call(self) -> None:
        state = self.state
        if state == "open" or (state == "half-open" and self._trial_in_flight):
            retry = max(0.0, self.reset_timeout - (self.clock() - (self.opened_at or 0)))
            raise CircuitOpen(
                f"{self.name} is failing; calls paused for {retry:.0f}s",
                headers={"Retry-After": str(max(1, int(retry)))},
            )
        if state == "half-open":
            self._trial_in_flight = True

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._trial_in_flight = False
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()

    def record_neutral(self) -> None:
        self._trial_in_flight = False

    def trip(self) -> None:
        """Open now, whatever the count: the provider's answer says calls cannot succeed until
        someone changes something (a wrong URL, project or key)."""
        self._trial_in_flight = False
        self.failures = max(self.failures, self.failure_threshold)
        self.opened_at = self.clock()


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before the n-th retry: `base` x 2^(n-1), at most `ceiling`, times a
    random factor in [1 - jitter, 1] (so many clients that failed together do not come back
    together). A provider's own figure (Retry-After, a documented minimum) is a floor.

        Backoff(base=1, ceiling=60).delay(3)              # 2 to 4 s
        Backoff(base=1, ceiling=60).delay(1, floor=60.0)  # FCM QUOTA_EXCEEDED: at least a minute
    """

    base: float
    ceiling: float
    jitter: float = 0.5

    def delay(self, n: int, floor: float | None = None, rand: Callable[[], float] = random.random) -> float:
        grown = min(self.ceiling, self.base * 2 ** max(n - 1, 0))
        return max(grown * (1 - self.jitter * rand()), floor or 0.0)


class OutboundHTTP:
    def __init__(
        self,
        client: Any = None,
        *,
        default_timeout: float = 5.0,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        multiplexed: bool = False,
    ) -> None:
        self._client = client
        self.default_timeout = default_timeout
        #: HTTP/2: many requests share one connection, and httpcore fails every stream on a
        #: connection whose socket read timed out. So each request's deadline is enforced by
        #: cancelling that request alone, and the transport read never times out (rather
        #: than relying on the cancellation firing before an equal read timeout).
        self.multiplexed = multiplexed
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.clock = clock
        self.breakers: dict[str, CircuitBreaker] = {}

    @property
    def client(self) -> Any:
        if self._client is None:
            import httpx

            from shared import tls

            self._client = tls.client(timeout=httpx.Timeout(self.default_timeout, connect=2.0))
        return self._client

    def breaker(self, provider: str) -> CircuitBreaker:
        b = self.breakers.get(provider)
        if b is None:
            b = self.breakers[provider] = CircuitBreaker(
                provider, failure_threshold=self.failure_threshold, reset_timeout=self.reset_timeout, clock=self.clock
            )
        return b

    async def request(self, provider: str, method: str, url: str, *, timeout: float | None = None, **kw: Any) -> Any:
        """The provider's response (any status); raises `CircuitOpen`, or
        `DependencyTimeout` / `ServiceUnavailable` when the call itself failed."""
        import httpx

        breaker = self.breaker(provider)
        breaker.before_call()
        limit = timeout or self.default_timeout
        transport_timeout: Any = limit
        if self.multiplexed:
            import httpx

            transport_timeout = httpx.Timeout(limit, read=None)
        try:
            async with asyncio.timeout(limit):
                resp = await self.client.request(method, url, timeout=transport_timeout, **kw)
        except (TimeoutError, httpx.TimeoutException) as exc:
            breaker.record_failure()
            raise errors.DependencyTimeout(f"{provider} did not answer within {limit}s", code="UPSTREAM_TIMEOUT") from exc
        except httpx.HTTPError as exc:
            breaker.record_failure()
            raise errors.ServiceUnavailable(f"{provider} is unreachable ({type(exc).__name__})",
                                            code="UPSTREAM_UNAVAILABLE") from exc
        except BaseException:
            breaker.record_neutral()
            raise
        if resp.status_code >= 500:
            breaker.record_failure()
        elif resp.status_code == 429:
            breaker.record_neutral()
        else:
            breaker.record_success()
        return resp

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
