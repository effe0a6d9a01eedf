"""The three delivery providers, over httpx through `shared.resilience.OutboundHTTP` (a
timeout on every call and a circuit breaker per provider):

- Supabase Realtime: `POST <base>/realtime/v1/api/broadcast` with `apikey` and the service
  key as bearer, body `{"messages": [{"topic", "event", "payload", "private"}]}`; 202 is
  success, 429 means "fewer messages per second".
- FCM HTTP v1: `POST <fcm>/v1/projects/<project>/messages:send` with an OAuth2 access token
  obtained by exchanging a service-account JWT (RS256) at the token URI; 404 / UNREGISTERED
  means the registration token is dead.
- APNs: `POST <apns>/3/device/<token>` (HTTP/2) with an ES256 provider token
  (`authorization: bearer`), `apns-topic`, `apns-push-type`, `apns-priority`, `apns-id`;
  410 Unregistered and 400 BadDeviceToken mean the device token is dead.

Each answer is classified into a `Result`; the drainer decides what to record and retry.
PyJWT and json are imported where used, so the handler's import stays light.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shared import errors
from shared.resilience import CircuitOpen, OutboundHTTP
from shared.settings import ConfigError

Outcome = Literal["sent", "retry", "throttled", "dead", "dropped", "released"]


@dataclass(frozen=True, slots=True)
class Result:
    """sent; retry (counts as a failed attempt); throttled (429: back off, not a failure);
    dead (permanent: retrying cannot help); dropped (the device token is dead); released
    (the circuit is open: not attempted)."""

    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    duration_ms: float | None = None


def _retry_after(resp: Any) -> float | None:
    value = resp.headers.get("retry-after")
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


async def _call(outbound: OutboundHTTP, provider: str, method: str, url: str, **kw: Any) -> tuple[Any, Result | None, float]:
    """The response, or the Result of a call that did not get one."""
    started = time.perf_counter()
    try:
        resp = await outbound.request(provider, method, url, **kw)
    except CircuitOpen as exc:
        retry = float(exc.headers.get("Retry-After", "1"))
        return None, Result("released", error=exc.message, retry_after=retry), 0.0
    except errors.ServiceUnavailable as exc:  # timeouts and transport errors
        return None, Result("retry", error=exc.message, duration_ms=(time.perf_counter() - started) * 1000), 0.0
    return resp, None, (time.perf_counter() - started) * 1000


def _body_text(resp: Any, limit: int = 300) -> str:
    try:
        return str(resp.text)[:limit]
    except Exception:
        return ""


# -- Supabase Realtime ------------------------------------------------------------------------


class RealtimeBroadcast:
    provider = "realtime"

    def __init__(self, outbound: OutboundHTTP, url: str, service_key: str, timeout: float = 5.0) -> None:
        self.outbound = outbound
        self.url = url
        self.headers = {"apikey": service_key, "authorization": f"Bearer {service_key}"}
        self.timeout = timeout

    async def send(self, messages: Sequence[dict[str, Any]]) -> Result:
        resp, failed, ms = await _call(
            self.outbound, self.provider, "POST", self.url, json={"messages": list(messages)},
            headers=self.headers, timeout=self.timeout,
        )
        if failed is not None:
            return failed
        code = resp.status_code
        if code in (200, 202):
            return Result("sent", code, duration_ms=ms)
        if code == 429:
            return Result("throttled", code, "rate limited by Realtime", _retry_after(resp), ms)
        return Result("retry", code, f"realtime answered {code}: {_body_text(resp)}", duration_ms=ms)


# -- push messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushMessage:
    """One notification to one device (possibly several coalesced events)."""

    token: str
    title: str
    body: str
    event_type: str
    event_ids: tuple[str, ...]
    count: int
    urgent: bool
    #: stable across retries of the same group (APNs apns-id)
    message_id: str


MAX_IDS_IN_PAYLOAD = 60  # APNs allows 4 KB; 60 ids are ~2.3 KB


# -- FCM HTTP v1 ---------------------------------------------------------------------------


class FcmSender:
    provider = "fcm"
    scope = "https://www.googleapis.com/auth/firebase.messaging"

    def __init__(
        self, outbound: OutboundHTTP, account: dict[str, Any], *, base_url: str, project_id: str | None = None,
        token_url: str | None = None, timeout: float = 5.0, clock: Callable[[], float] = time.time,
    ) -> None:
        for key in ("client_email", "private_key"):
            if not account.get(key):
                raise ConfigError(f"FCM_SERVICE_ACCOUNT_JSON: the service account has no {key}")
        self.outbound = outbound
        self.account = account
        self.project_id = project_id or account.get("project_id")
        if not self.project_id:
            raise ConfigError("FCM_PROJECT_ID is not set and the service account names no project")
        self.token_url = token_url or account.get("token_uri") or "https://oauth2.googleapis.com/token"
        self.url = f"{base_url.rstrip('/')}/v1/projects/{self.project_id}/messages:send"
        self.timeout = timeout
        self.clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = asyncio.Lock()

    def assertion(self) -> str:
        import jwt

        now = int(self.clock())
        claims = {"iss": self.account["client_email"], "scope": self.scope, "aud": self.token_url,
                  "iat": now, "exp": now + 3600}
        headers = {"kid": self.account["private_key_id"]} if self.account.get("private_key_id") else None
        return jwt.encode(claims, self.account["private_key"], algorithm="RS256", headers=headers)

    async def access_token(self) -> str | Result:
        if self._token and self.clock() < self._token_expires:
            return self._token
        async with self._lock:
            if self._token and self.clock() < self._token_expires:
                return self._token
            resp, failed, _ = await _call(
                self.outbound, "google-oauth", "POST", self.token_url, timeout=self.timeout,
                data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": self.assertion()},
            )
            if failed is not None:
                return failed
            if resp.status_code != 200:
                return Result("retry", resp.status_code, f"token exchange answered {resp.status_code}")
            body = resp.json()
            self._token = str(body["access_token"])
            self._token_expires = self.clock() + max(60, int(body.get("expires_in", 3600)) - 300)
            return self._token

    def body(self, m: PushMessage) -> dict[str, Any]:
        return {"message": {
            "token": m.token,
            "notification": {"title": m.title, "body": m.body},
            "data": {"type": m.event_type, "count": str(m.count), "event_ids": ",".join(m.event_ids[:MAX_IDS_IN_PAYLOAD])},
            # a retry after a timeout the provider did act on replaces, not repeats, the notification
            "android": {"priority": "HIGH" if m.urgent else "NORMAL", "collapse_key": m.message_id},
        }}

    async def send(self, m: PushMessage) -> Result:
        token = await self.access_token()
        if isinstance(token, Result):
            return token
        resp, failed, ms = await _call(
            self.outbound, self.provider, "POST", self.url, json=self.body(m),
            headers={"authorization": f"Bearer {token}"}, timeout=self.timeout,
        )
        if failed is not None:
            return failed
        code = resp.status_code
        if code == 200:
            return Result("sent", code, duration_ms=ms)
        error_code, message = _fcm_error(resp)
        if code == 404 or error_code in ("UNREGISTERED", "SENDER_ID_MISMATCH") or (
            code == 400 and "registration token" in message.lower()
        ):
            return Result("dropped", code, f"fcm: {error_code or 'NOT_FOUND'}: {message}"[:300], duration_ms=ms)
        if code == 401:
            self._token = None  # expired or revoked: a fresh one next time
            return Result("retry", code, "fcm: access token refused", duration_ms=ms)
        if code == 429:
            return Result("throttled", code, f"fcm: {error_code or 'QUOTA_EXCEEDED'}", _retry_after(resp), ms)
        if code == 400:
            return Result("dead", code, f"fcm: {error_code or 'INVALID_ARGUMENT'}: {message}"[:300], duration_ms=ms)
        return Result("retry", code, f"fcm answered {code}: {error_code} {message}"[:300], duration_ms=ms)


def _fcm_error(resp: Any) -> tuple[str, str]:
    try:
        err = resp.json().get("error", {})
    except Exception:
        return "", _body_text(resp)
    if not isinstance(err, dict):
        return "", str(err)[:200]
    code = ""
    for d in err.get("details", []) or []:
        if isinstance(d, dict) and d.get("errorCode"):
            code = str(d["errorCode"])
    return code or str(err.get("status", "")), str(err.get("message", ""))


# -- APNs ---------------------------------------------------------------------------------------

APNS_DEAD_REASONS = frozenset({"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic"})
APNS_TOKEN_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken", "MissingProviderToken"})


class ApnsSender:
    provider = "apns"
    #: Apple: refresh the provider token at most every 20 minutes, at least every 60
    token_ttl = 45 * 60

    def __init__(
        self, outbound: OutboundHTTP, *, base_url: str, key_id: str, team_id: str, private_key: str, topic: str,
        timeout: float = 5.0, clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbound = outbound
        self.base_url = base_url.rstrip("/")
        self.key_id = key_id
        self.team_id = team_id
        self.private_key = private_key
        self.topic = topic
        self.timeout = timeout
        self.clock = clock
        self._jwt: str | None = None
        self._jwt_at = 0.0

    def provider_token(self) -> str:
        now = self.clock()
        if self._jwt is None or now - self._jwt_at >= self.token_ttl:
            import jwt

            self._jwt = jwt.encode({"iss": self.team_id, "iat": int(now)}, self.private_key, algorithm="ES256",
                                   headers={"kid": self.key_id})
            self._jwt_at = now
        return self._jwt

    def headers(self, m: PushMessage) -> dict[str, str]:
        return {
            "authorization": f"bearer {self.provider_token()}",
            "apns-topic": self.topic,
            "apns-push-type": "alert",
            "apns-priority": "10" if m.urgent else "5",
            "apns-id": m.message_id,
            "apns-collapse-id": m.message_id,
        }

    @staticmethod
    def body(m: PushMessage) -> dict[str, Any]:
        return {
            "aps": {"alert": {"title": m.title, "body": m.body}, "thread-id": m.event_type, "sound": "default"},
            "type": m.event_type,
            "count": m.count,
            "event_ids": list(m.event_ids[:MAX_IDS_IN_PAYLOAD]),
        }

    async def send(self, m: PushMessage) -> Result:
        url = f"{self.base_url}/3/device/{m.token}"
        resp, failed, ms = await _call(
            self.outbound, self.provider, "POST", url, content=json.dumps(self.body(m)).encode(),
            headers={**self.headers(m), "content-type": "application/json"}, timeout=self.timeout,
        )
        if failed is not None:
            return failed
        code = resp.status_code
        if code == 200:
            return Result("sent", code, duration_ms=ms)
        try:
            reason = str(resp.json().get("reason", ""))
        except Exception:
            reason = _body_text(resp, 100)
        if code == 410 or reason in APNS_DEAD_REASONS:
            return Result("dropped", code, f"apns: {reason or 'Unregistered'}", duration_ms=ms)
        if code == 403 and reason in APNS_TOKEN_REASONS:
            self._jwt = None
            return Result("retry", code, f"apns: {reason}", duration_ms=ms)
        if code == 429:
            return Result("throttled", code, f"apns: {reason or 'TooManyRequests'}", _retry_after(resp), ms)
        if code == 400 or code == 413:
            return Result("dead", code, f"apns: {reason}", duration_ms=ms)
        return Result("retry", code, f"apns answered {code}: {reason}", duration_ms=ms)


# -- construction from settings ------------------------------------------------------------------


def _read(inline: str | None, path: str | None) -> str | None:
    if inline:
        return inline
    if path:
        return Path(path).read_text()
    return None


def fcm_from_settings(settings: Any, outbound: OutboundHTTP, clock: Callable[[], float]) -> FcmSender | None:
    raw = _read(settings.fcm_service_account_json, settings.fcm_service_account_file)
    if not raw:
        return None
    try:
        account = json.loads(raw)
    except ValueError:
        raise ConfigError("FCM_SERVICE_ACCOUNT_JSON is not valid JSON") from None
    return FcmSender(outbound, account, base_url=settings.fcm_url, project_id=settings.fcm_project_id,
                     token_url=settings.fcm_token_url, timeout=settings.push_timeout_seconds, clock=clock)


def apns_from_settings(settings: Any, outbound: OutboundHTTP, clock: Callable[[], float]) -> ApnsSender | None:
    key = _read(settings.apns_private_key, settings.apns_private_key_file)
    if not key:
        return None
    for name in ("apns_key_id", "apns_team_id", "apns_topic"):
        settings.require(name)
    if settings.apns_http2:
        outbound = _http2_outbound(outbound, settings.push_timeout_seconds)
    return ApnsSender(outbound, base_url=settings.apns_url, key_id=settings.apns_key_id, team_id=settings.apns_team_id,
                      private_key=key, topic=settings.apns_topic, timeout=settings.push_timeout_seconds, clock=clock)


def _http2_outbound(shared_outbound: OutboundHTTP, timeout: float) -> OutboundHTTP:
    """APNs speaks HTTP/2 only: its own client, sharing the process's circuit breakers."""
    import httpx

    try:
        import h2  # noqa: F401  (httpx needs it for http2=True; a runtime dependency)
    except ImportError as exc:  # pragma: no cover - only when installed without it
        raise ConfigError("APNS_HTTP2 needs the h2 package (httpx[http2])") from exc
    client = httpx.AsyncClient(http2=True, timeout=httpx.Timeout(timeout, connect=2.0))
    out = OutboundHTTP(client, default_timeout=timeout, failure_threshold=shared_outbound.failure_threshold,
                       reset_timeout=shared_outbound.reset_timeout, clock=shared_outbound.clock)
    out.breakers = shared_outbound.breakers
    return out


def fail_fast_on_missing_sniffio() -> None:
    """httpcore tries `import sniffio` on every connection-pool operation; when sniffio is not
    installed (it is not in the lock), each try scans sys.path again: about a millisecond per
    push. A None entry in sys.modules makes that failing import instant, and changes nothing
    else (the module is absent either way)."""
    import importlib.util
    import sys

    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def message_id(delivery_ids: Sequence[int]) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "edgefn-push:" + ",".join(str(i) for i in sorted(delivery_ids))))
