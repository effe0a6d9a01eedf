"""The three delivery providers, over httpx through `shared.resilience.OutboundHTTP` (a
timeout on every call and a circuit breaker per provider). Each answer is classified into a
`Result` by what the provider documents; the drainer decides what to record and retry.

- Supabase Realtime (supabase/realtime `broadcast_controller.ex`, `batch_broadcast.ex`):
  `POST <base>/realtime/v1/api/broadcast` with `apikey` and the service key as bearer, body
  `{"messages": [{"topic", "event", "payload", "private"}]}`. 202 is success; 429 (no
  Retry-After) means the project's 60 s message average plus this batch passes the plan;
  422 means a message in the batch is invalid (one error map per message), so the batch is
  split to find it (`isolate.py`).
- FCM HTTP v1 (the ErrorCode reference): `POST <fcm>/v1/projects/<project>/messages:send`
  with an OAuth2 token from a service-account JWT (RS256). 404 UNREGISTERED and a 400 about
  the registration token mean the token is dead; QUOTA_EXCEEDED (429) asks for at least a
  minute; 5xx may carry Retry-After.
- APNs (Apple's "Handling notification responses"): `POST <apns>/3/device/<token>` over
  HTTP/2 with a provider token (`apns_token.py`). 410 and 400 BadDeviceToken mean the device
  token is dead; 429 TooManyRequests is about one device; TooManyProviderTokenUpdates about
  our provider tokens.

A device token is dropped only on those explicit answers. Any other 400, 403 or 404 says
our configuration is wrong (a URL, a project id, a topic, a key): the provider's breaker
opens, an alert is raised, nothing is deactivated, and the delivery is retried later. An
answer that is not the provider's (an HTML page, truncated JSON, a wrong content type) is a
retryable failure, logged with its first bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared import errors
from shared.observability import json_log, metrics, sentry
from shared.resilience import CircuitOpen, OutboundHTTP
from shared.settings import ConfigError

if TYPE_CHECKING:
    from functions.realtime_orchestrator.apns_token import ProviderTokens

Outcome = Literal["sent", "retry", "throttled", "dead", "dropped", "released", "invalid"]


@dataclass(frozen=True, slots=True)
class Result:
    """sent; retry (a failed attempt); throttled (429: slow down; an attempt is not spent, the
    throttle budget is); dead (retrying cannot help); dropped (the device token is dead);
    released (not attempted: an open circuit, pacing); invalid (Realtime 422: a message in
    the batch is refused, split it)."""

    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    #: seconds to wait at least (Retry-After, or the provider's documented minimum)
    retry_after: float | None = None
    duration_ms: float | None = None
    #: throttled: "provider" (its quota: every send slows down) or "target" (this device only)
    scope: Literal["provider", "target"] = "provider"


class ProviderMisconfigured(Exception):
    """A provider's answer that only a configuration change can fix (what Sentry receives)."""


FIRST_BYTES = 120


def _retry_after(resp: Any) -> float | None:
    value = resp.headers.get("retry-after")
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _first_bytes(resp: Any) -> bytes:
    try:
        return bytes(resp.content[:FIRST_BYTES])
    except Exception:
        return b""


def _json_body(resp: Any) -> Any:
    """The body as JSON when the provider sent JSON, else None (an HTML page from a proxy, a
    truncated body, a wrong content type)."""
    if "json" not in resp.headers.get("content-type", ""):
        return None
    try:
        return json.loads(resp.content)
    except ValueError:
        return None


def unreadable(outbound: OutboundHTTP, provider: str, resp: Any, ms: float) -> Result:
    """An answer that is not the provider's: retry later, and say what it was."""
    first = _first_bytes(resp)
    json_log.log("warning", "provider answered something unreadable", provider=provider, status=resp.status_code,
                 content_type=resp.headers.get("content-type", ""), first_bytes=repr(first))
    outbound.breaker(provider).record_failure()
    return Result("retry", resp.status_code, f"{provider} answered {resp.status_code} "
                  f"({resp.headers.get('content-type') or 'no content type'}): {first!r}"[:300], duration_ms=ms)


def misconfigured(outbound: OutboundHTTP, provider: str, code: int, why: str, ms: float | None = None) -> Result:
    """An answer about our configuration, not a device: open the breaker (every call would
    fail the same way), alert, deactivate nothing, retry once someone has fixed it."""
    outbound.breaker(provider).trip()
    message = f"{provider} answered {code}: {why}"[:300]
    json_log.log("error", "provider configuration alert", provider=provider, status=code, reason=why[:300], alert=True)
    metrics.incr(f"alert.{provider}")
    sentry.capture(ProviderMisconfigured(message), provider=provider)
    return Result("retry", code, message, duration_ms=ms)


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
        if code == 202:
            return Result("sent", code, duration_ms=ms)
        if code == 429:
            body = _json_body(resp)
            why = body.get("message") if isinstance(body, dict) else None
            return Result("throttled", code, f"realtime: {why or 'rate limited'}", _retry_after(resp), ms)
        if code in (413, 422):
            body = _json_body(resp)
            if code == 422 and not isinstance(body, dict):
                return unreadable(self.outbound, self.provider, resp, ms)
            return Result("invalid", code, f"realtime: {_realtime_reason(body) if code == 422 else 'batch too large'}",
                          duration_ms=ms)
        if code >= 500:
            if _json_body(resp) is None:
                return unreadable(self.outbound, self.provider, resp, ms)  # a proxy's page, say
            return Result("retry", code, f"realtime answered {code}: {_first_bytes(resp)!r}"[:300], _retry_after(resp), ms)
        if 400 <= code < 500:
            return misconfigured(self.outbound, self.provider, code, f"{_first_bytes(resp)!r}", ms)
        return unreadable(self.outbound, self.provider, resp, ms)  # 200 etc.: not Realtime's answer


def _realtime_reason(body: Any) -> str:
    """The changeset errors (`{"errors": {"messages": [{}, {"payload": ["..."]}]}}`) as text."""
    errs = body.get("errors") if isinstance(body, dict) else None
    items = errs.get("messages") if isinstance(errs, dict) else None
    if isinstance(items, list):
        parts = []
        for item in items:
            if isinstance(item, dict):
                parts += [f"{k}: {'; '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in item.items()]
            else:
                parts.append(str(item))
        if parts:
            return ", ".join(dict.fromkeys(parts))
    return json.dumps(body)[:200]


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
    #: the kind of notification ("match", "message:<conversation>"): a newer one of the same
    #: kind replaces the older on the device and in the provider's offline storage
    collapse_key: str


MAX_IDS_IN_PAYLOAD = 60  # APNs allows 4 KB; 60 ids are ~2.3 KB
#: APNs refuses an apns-collapse-id over 64 bytes (400 BadCollapseId)
MAX_COLLAPSE_BYTES = 64


def collapse_id(key: str) -> str:
    """`key`, or a stable digest of it when it is longer than APNs allows."""
    if len(key.encode()) <= MAX_COLLAPSE_BYTES:
        return key
    return key.encode()[:40].decode(errors="ignore") + ":" + hashlib.sha256(key.encode()).hexdigest()[:16]


# -- FCM HTTP v1 ---------------------------------------------------------------------------


class FcmSender:
    provider = "fcm"
    scope = "https://www.googleapis.com/auth/firebase.messaging"
    #: ErrorCode reference, QUOTA_EXCEEDED: "exponential backoff with a minimum initial delay of 1 minute"
    QUOTA_WAIT = 60.0

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
        self._key: Any = None

    def assertion(self) -> str:
        import jwt

        now = int(self.clock())
        claims = {"iss": self.account["client_email"], "scope": self.scope, "aud": self.token_url,
                  "iat": now, "exp": now + 3600}
        headers = {"kid": self.account["private_key_id"]} if self.account.get("private_key_id") else None
        if self._key is None:  # parsing an RSA key takes tens of milliseconds: once
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            self._key = load_pem_private_key(self.account["private_key"].encode(), password=None)
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)

    async def access_token(self) -> str | Result:
        if self._token and self.clock() < self._token_expires:
            return self._token
        async with self._lock:
            if self._token and self.clock() < self._token_expires:
                return self._token
            resp, failed, ms = await _call(
                self.outbound, "google-oauth", "POST", self.token_url, timeout=self.timeout,
                # in a thread: the first call parses the key (not on the event loop)
                data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                      "assertion": await asyncio.to_thread(self.assertion)},
            )
            if failed is not None:
                return failed
            body = _json_body(resp)
            token = body.get("access_token") if isinstance(body, dict) else None
            if resp.status_code != 200 or not isinstance(token, str):
                if resp.status_code == 200 or resp.status_code >= 500:
                    return unreadable(self.outbound, "google-oauth", resp, ms)
                return misconfigured(self.outbound, "google-oauth", resp.status_code,
                                     f"the service account's token exchange was refused: {_first_bytes(resp)!r}", ms)
            self._token = token
            expires_in = body.get("expires_in") if isinstance(body.get("expires_in"), int) else 3600
            self._token_expires = self.clock() + max(60, expires_in - 300)
            return self._token

    def body(self, m: PushMessage) -> dict[str, Any]:
        return {"message": {
            "token": m.token,
            "notification": {"title": m.title, "body": m.body},
            "data": {"type": m.event_type, "count": str(m.count), "event_ids": ",".join(m.event_ids[:MAX_IDS_IN_PAYLOAD])},
            # one collapse key per kind: FCM keeps at most 4 per offline device, and a newer
            # notification of a kind replaces the older one (also in the tray, by tag)
            "android": {"priority": "HIGH" if m.urgent else "NORMAL", "collapse_key": m.collapse_key,
                        "notification": {"tag": m.collapse_key}},
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
        return self.classify(resp, ms)

    def classify(self, resp: Any, ms: float) -> Result:
        code = resp.status_code
        body = _json_body(resp)
        if code == 200:
            if isinstance(body, dict) and isinstance(body.get("name"), str):
                return Result("sent", code, duration_ms=ms)
            return unreadable(self.outbound, self.provider, resp, ms)
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            if code >= 500:
                return unreadable(self.outbound, self.provider, resp, ms)
            return misconfigured(self.outbound, self.provider, code, f"not an FCM error: {_first_bytes(resp)!r}", ms)
        fcm_code, violations = _fcm_details(err)
        message = str(err.get("message", ""))[:200]
        what = f"fcm: {fcm_code or err.get('status') or code}: {message}"[:300]
        if code == 404 and fcm_code == "UNREGISTERED":
            return Result("dropped", code, what, duration_ms=ms)
        if code == 400 and (fcm_code == "INVALID_ARGUMENT" and "registration token" in message.lower()
                            or "message.token" in violations):
            return Result("dropped", code, what, duration_ms=ms)
        if code == 400 and violations:  # this message's fields: retrying the same cannot help
            return Result("dead", code, f"{what} ({', '.join(violations)})"[:300], duration_ms=ms)
        if code == 401:
            self._token = None  # expired or revoked: a fresh one next time
            return Result("retry", code, what, duration_ms=ms)
        if code == 429:
            return Result("throttled", code, what, max(_retry_after(resp) or 0.0, self.QUOTA_WAIT), ms)
        if code >= 500:
            return Result("retry", code, what, _retry_after(resp), ms)
        # SENDER_ID_MISMATCH, THIRD_PARTY_AUTH_ERROR, PERMISSION_DENIED, a 404 without
        # UNREGISTERED (a wrong project or URL): every token would get the same answer
        return misconfigured(self.outbound, self.provider, code, what, ms)


def _fcm_details(err: dict[str, Any]) -> tuple[str, list[str]]:
    """The FcmError code and the fields a BadRequest names."""
    code, fields = "", []
    for d in err.get("details", []) or []:
        if not isinstance(d, dict):
            continue
        if d.get("errorCode"):
            code = str(d["errorCode"])
        for v in d.get("fieldViolations", []) or []:
            if isinstance(v, dict) and v.get("field"):
                fields.append(str(v["field"]))
    return code, fields


# -- APNs ---------------------------------------------------------------------------------------

#: the device token is no longer valid: drop it (410 Unregistered / ExpiredToken, 400 BadDeviceToken)
APNS_DEAD_REASONS = frozenset({"BadDeviceToken", "Unregistered", "ExpiredToken"})
#: this notification cannot be delivered as it is
APNS_MESSAGE_REASONS = frozenset({"PayloadTooLarge"})


class ApnsSender:
    provider = "apns"

    def __init__(self, outbound: OutboundHTTP, tokens: ProviderTokens, *, base_url: str, topic: str,
                 timeout: float = 5.0) -> None:
        self.outbound = outbound
        self.tokens = tokens
        self.base_url = base_url.rstrip("/")
        self.topic = topic
        self.timeout = timeout

    def headers(self, m: PushMessage, provider_token: str) -> dict[str, str]:
        return {
            "authorization": f"bearer {provider_token}",
            "apns-topic": self.topic,
            "apns-push-type": "alert",
            "apns-priority": "10" if m.urgent else "5",
            "apns-id": m.message_id,
            "apns-collapse-id": collapse_id(m.collapse_key),
            "content-type": "application/json",
        }

    @staticmethod
    def body(m: PushMessage) -> dict[str, Any]:
        return {
            "aps": {"alert": {"title": m.title, "body": m.body}, "thread-id": m.collapse_key, "sound": "default"},
            "type": m.event_type,
            "count": m.count,
            "event_ids": list(m.event_ids[:MAX_IDS_IN_PAYLOAD]),
        }

    async def send(self, m: PushMessage) -> Result:
        token = await self.tokens.get()
        resp, failed, ms = await _call(
            self.outbound, self.provider, "POST", f"{self.base_url}/3/device/{m.token}",
            content=json.dumps(self.body(m)).encode(), headers=self.headers(m, token), timeout=self.timeout,
        )
        if failed is not None:
            return failed
        code = resp.status_code
        body = _json_body(resp)
        if code == 200:
            if resp.content and body is None:
                return unreadable(self.outbound, self.provider, resp, ms)
            return Result("sent", code, duration_ms=ms)
        reason = str(body.get("reason", "")) if isinstance(body, dict) else ""
        if not reason:
            if code >= 500:
                return unreadable(self.outbound, self.provider, resp, ms)
            return misconfigured(self.outbound, self.provider, code, f"not an APNs error: {_first_bytes(resp)!r}", ms)
        what = f"apns: {reason}"
        if reason in APNS_DEAD_REASONS or code == 410:
            return Result("dropped", code, what, duration_ms=ms)
        if reason in APNS_MESSAGE_REASONS:
            return Result("dead", code, what, duration_ms=ms)
        if reason == "ExpiredProviderToken":
            # a new provider token, but never sooner than 20 minutes after the last one
            return Result("retry", code, what, await self.tokens.refused(token), ms)
        if reason == "TooManyProviderTokenUpdates":
            json_log.log("warning", "apns: provider token refreshed too often (instances minting their own?)")
            return Result("throttled", code, what, await self.tokens.refused(token), ms)
        if code == 429:  # TooManyRequests: too many for this one device token
            return Result("throttled", code, what, _retry_after(resp), ms, scope="target")
        if code >= 500:
            return Result("retry", code, what, _retry_after(resp), ms)
        if reason in ("InvalidProviderToken", "MissingProviderToken"):
            await self.tokens.refused(token)  # a fresh one when the 20 minutes allow, in case it was ours
        # BadTopic, DeviceTokenNotForTopic, TopicDisallowed, BadCertificate, Forbidden,
        # BadPath, InvalidProviderToken ...: the same answer for every device
        return misconfigured(self.outbound, self.provider, code, what, ms)


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


def apns_from_settings(settings: Any, outbound: OutboundHTTP, clock: Callable[[], float], kv: Any = None) -> ApnsSender | None:
    """`kv` (the shared Redis) keeps one provider token for every instance; without it each
    instance mints its own (see `apns_token.py`)."""
    from functions.realtime_orchestrator.apns_token import ProviderTokens

    key = _read(settings.apns_private_key, settings.apns_private_key_file)
    if not key:
        return None
    for name in ("apns_key_id", "apns_team_id", "apns_topic"):
        settings.require(name)
    tokens = ProviderTokens(kv, key_id=settings.apns_key_id, team_id=settings.apns_team_id, private_key=key, clock=clock)
    return ApnsSender(_http2_outbound(outbound, settings.push_timeout_seconds), tokens, base_url=settings.apns_url,
                      topic=settings.apns_topic, timeout=settings.push_timeout_seconds)


def _http2_outbound(shared_outbound: OutboundHTTP, timeout: float) -> OutboundHTTP:
    """APNs speaks HTTP/2 only: its own client (HTTP/2 negotiated over TLS, or with prior
    knowledge on a cleartext URL), sharing the process's circuit breakers; a slow answer
    times out alone (`OutboundHTTP.multiplexed`)."""
    import httpx

    try:
        import h2  # noqa: F401  (httpx needs it for HTTP/2; a runtime dependency)
    except ImportError as exc:  # pragma: no cover - only when installed without it
        raise ConfigError("APNs needs the h2 package (httpx[http2])") from exc
    from shared import tls

    client = tls.client(http1=False, http2=True, timeout=httpx.Timeout(timeout, connect=2.0, read=None))
    out = OutboundHTTP(client, default_timeout=timeout, failure_threshold=shared_outbound.failure_threshold,
                       reset_timeout=shared_outbound.reset_timeout, clock=shared_outbound.clock, multiplexed=True)
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
