"""Stand-ins for Supabase Realtime, Google's OAuth token endpoint, FCM HTTP v1 and APNs, built
from the providers' own source and documentation, not from our client's assumptions. Each
rule cites where it comes from. They are served over real HTTP by hypercorn on one port:
HTTP/1.1 for Realtime, OAuth and FCM, and HTTP/2 (cleartext, prior knowledge) for APNs,
which answers nothing else.

    fake = ProviderFake(apns_public_key=pem, fcm_public_key=pem, service_key="svc")
    fake.realtime.plan(max_events_per_second=100)   # Free; other_rate=50: others use half
    fake.mode["fcm"] = "fail"        # "ok" | "fail" | "throttle" | "unavailable" | ("slow", s)
                                     # | ("garbage", status, content type, body)
    fake.fcm.dead_tokens.add("tok-1")
    fake.broadcasts()                # delivered Realtime messages, in arrival order
    fake.pushes()                    # accepted pushes: dicts with provider, token, body, headers

Time is `fake.clock` (wall-clock seconds; a test may set its own). Also runnable as a process
(the benchmarks): `python -m tests.functions.realtime_orchestrator.fakes --port N --config
JSON`; then `GET /_records`, `GET /_stats`, `POST /_mode` ({"provider": mode}),
`POST /_realtime` (plan keywords), `POST /_reset`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

Clock = Callable[[], float]
JSON = "application/json"


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON
    #: seconds to wait before answering (mode "slow")
    delay: float = 0.0


def _json(status: int, obj: Any, **headers: str) -> Answer:
    return Answer(status, json.dumps(obj).encode(), dict(headers))


# -- Supabase Realtime --------------------------------------------------------------------------


class RateCounter:
    """Realtime's `Realtime.RateCounter` (lib/realtime/rate_counter/rate_counter.ex): events
    are added to a counter; every `tick` seconds the count is pushed onto a bucket list kept
    to `buckets` entries, and `avg` = sum(bucket) / len(bucket) / tick. The average changes
    only at ticks. `other_rate` models traffic we do not send (other clients of the project)."""

    def __init__(self, clock: Clock, tick: float, buckets: int) -> None:
        self.clock = clock
        self.tick = tick
        self.buckets = buckets
        self.reset()

    def reset(self) -> None:
        self.count = 0.0
        self.bucket: list[float] = []
        self.avg = 0.0
        self.other_rate = 0.0
        self.other_total = 0.0
        self.next_tick = self.clock() + self.tick

    def _advance(self) -> None:
        now = self.clock()
        due = int((now - self.next_tick) // self.tick) + 1 if now >= self.next_tick else 0
        if due > self.buckets + 1:  # a test's clock jumped ahead: only the last window matters
            other = self.other_rate * self.tick
            self.other_total += other * due
            self.bucket = [other] * self.buckets
            self.count = 0.0
            self.avg = other / self.tick
            self.next_tick += due * self.tick
            return
        while now >= self.next_tick:
            other = self.other_rate * self.tick
            self.other_total += other
            self.bucket = [self.count + other, *self.bucket][: self.buckets]
            self.count = 0.0
            self.avg = sum(self.bucket) / len(self.bucket) / self.tick
            self.next_tick += self.tick

    def add(self, n: float = 1) -> None:
        self._advance()
        self.count += n

    def average(self) -> float:
        self._advance()
        return self.avg


class RealtimeStandIn:
    """`POST /realtime/v1/api/broadcast`, as supabase/realtime answers it.

    - router.ex: the route pipes through `AssignTenant` (counts the request), `RateLimiter`
      (429 `{"message": "Too many requests"}` when the 60 s request average reaches the
      tenant's max events per second) and `AuthTenant` (401 `{"message": "Unauthorized"}`
      unless `authorization: Bearer` or `apikey` is a valid project key; the role is the
      key's).
    - tenants/batch_broadcast.ex: the messages are validated first (topic, event and payload
      required, the payload a map no larger than max_payload_size_in_kb * 1000 + 500 bytes):
      any invalid message makes the whole batch a 422 with one error map per message
      (ChangesetView). Then `check_rate_limit`: 429 "You have exceeded your rate limit" when
      the events average is above the plan, and 429 "Too many messages to broadcast, please
      reduce the batch size" when average + batch size is. No Retry-After on either.
    - tenants.ex `events_per_second_rate`: the events average is a RateCounter of 5 s ticks
      and 12 buckets (60 s); `requests_per_second_rate` the default 1 s ticks, 60 buckets.
    - Accepted messages are counted one by one. A private message goes out only when the
      caller's role may write to `realtime.messages` (the service role bypasses RLS; `anon`
      has no policy here): otherwise it is dropped silently, and the answer is still 202.
    - Plans (guides/realtime/limits): Free 100 messages/s, 256 KB payloads; Pro 500, 3,000 KB.
    """

    def __init__(self, clock: Clock, keys: dict[str, str]) -> None:
        self.clock = clock
        self.keys = keys  # project key -> role
        self.events = RateCounter(clock, 5.0, 12)
        self.requests = RateCounter(clock, 1.0, 60)
        self.plan()

    def plan(self, max_events_per_second: int = 100_000, max_payload_size_in_kb: int = 256, other_rate: float = 0.0) -> None:
        """The tenant's limits (tests default to a plan nothing reaches) and other traffic."""
        self.max_events = max_events_per_second
        self.max_payload_kb = max_payload_size_in_kb
        self.events.reset()
        self.requests.reset()
        self.events.other_rate = other_rate
        self.since = self.clock()
        self.delivered: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []
        self.answers: dict[str, int] = {}

    def _count(self, answer: Answer) -> Answer:
        key = str(answer.status)
        self.answers[key] = self.answers.get(key, 0) + 1
        return answer

    def handle(self, headers: dict[str, str], raw: bytes) -> tuple[Answer, Any]:
        self.requests.add(1)
        rolling = math.trunc(self.requests.average())
        limits = {"x-rate-rolling": str(rolling), "x-rate-limit": str(self.max_events),
                  "x-rate-limit-remaining": str(self.max_events - rolling)}
        if rolling >= self.max_events:
            return self._count(_json(429, {"message": "Too many requests"}, **limits)), None
        role = self.keys.get(_bearer(headers.get("authorization")) or headers.get("apikey") or "")
        if role is None:
            return self._count(_json(401, {"message": "Unauthorized"}, **limits)), None
        try:
            body = json.loads(raw)
        except ValueError:  # Plug.Parsers.ParseError
            return self._count(_json(400, {"errors": {"detail": "Bad Request"}}, **limits)), None
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return self._count(_json(422, {"errors": {"messages": ["can't be blank"]}}, **limits)), body
        errors = [self._invalid(m) for m in messages]
        if any(errors):
            return self._count(_json(422, {"errors": {"messages": errors}}, **limits)), body
        avg = self.events.average()
        if avg > self.max_events:
            return self._count(_json(429, {"message": "You have exceeded your rate limit"}, **limits)), body
        if len(messages) + avg > self.max_events:
            return self._count(_json(429, {"message": "Too many messages to broadcast, please reduce the batch size"},
                                     **limits)), body
        for m in messages:
            if m.get("private", False) and role != "service_role":
                self.dropped.append(m)
                continue
            self.events.add(1)
            self.delivered.append(m)
        return self._count(Answer(202, b"", limits)), body

    def _invalid(self, m: Any) -> dict[str, list[str]]:
        if not isinstance(m, dict):
            return {"messages": ["is invalid"]}
        errors: dict[str, list[str]] = {}
        for key in ("topic", "event", "payload"):
            if m.get(key) in (None, ""):
                errors[key] = ["can't be blank"]
        payload = m.get("payload")
        if payload is not None and not isinstance(payload, dict):
            errors["payload"] = ["is invalid"]
        elif payload is not None and len(json.dumps(payload)) > self.max_payload_kb * 1000 + 500:
            errors["payload"] = ["Payload size exceeds tenant limit"]
        return errors


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token if scheme.lower() == "bearer" else None


# -- FCM HTTP v1 --------------------------------------------------------------------------------


def _fcm_error(status: int, grpc: str, message: str, code: str | None = None, **headers: str) -> Answer:
    """FCM's error body (firebase.google.com/docs/cloud-messaging/error-codes): a google.rpc
    status, with an FcmError detail carrying the FCM error code."""
    err: dict[str, Any] = {"code": status, "message": message, "status": grpc}
    if code:
        err["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]
    return _json(status, {"error": err}, **headers)


class FcmStandIn:
    """`POST /v1/projects/<project>/messages:send` and Google's OAuth token endpoint.

    ErrorCode reference (firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode):
    UNREGISTERED (404) for a token that is no longer valid; SENDER_ID_MISMATCH (403) for a
    token that belongs to another sender; INVALID_ARGUMENT (400) for a malformed registration
    token ("The registration token is not a valid FCM registration token") or invalid message
    fields (a google.rpc.BadRequest naming them); QUOTA_EXCEEDED (429, RESOURCE_EXHAUSTED)
    when the project's per-minute quota is spent, to be retried after at least a minute;
    UNAVAILABLE (503) and INTERNAL (500), to be retried honouring Retry-After. A project id
    the credentials do not own is a 404 NOT_FOUND with no FCM error code.

    Offline devices (cloud-messaging/customize-messages/collapsible-message-types): FCM keeps
    the latest message per collapse key and at most 4 collapse keys per device ("no guarantee
    which ones are kept": this stand-in drops the oldest key), and up to 100 non-collapsible
    messages. `online(token)` delivers what was kept.
    """

    MAX_COLLAPSE_KEYS = 4
    MAX_STORED = 100

    def __init__(self, clock: Clock, public_key: str | None, project: str) -> None:
        self.clock = clock
        self.public_key = public_key
        self.project = project
        #: Retry-After on 5xx answers (FCM may send one); None: no header
        self.retry_after: str | None = None
        self.quota_per_minute = 600_000  # HTTP v1 quota tokens per minute
        self.issued: set[str] = set()
        self.dead_tokens: set[str] = set()
        self.foreign_tokens: set[str] = set()
        self.offline: dict[str, OrderedDict[str, dict[str, Any]]] = {}
        self.stored_plain: dict[str, list[dict[str, Any]]] = {}
        self.collapse_dropped: list[dict[str, Any]] = []
        self._window = (0, 0)

    def token(self, base_url: str, raw: bytes) -> Answer:
        import jwt

        form = dict(urllib.parse.parse_qsl(raw.decode(errors="replace")))
        try:
            assert form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer"
            claims = jwt.decode(form["assertion"], self.public_key, algorithms=["RS256"], audience=base_url + "/token")
            assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
        except Exception:
            return _json(400, {"error": "invalid_grant"})
        token = f"ya29.stand-in-{uuid.uuid4().hex[:12]}"
        self.issued.add(token)
        return _json(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def send(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[Answer, Any]:
        if _bearer(headers.get("authorization")) not in self.issued:
            return _fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), None
        if path != f"/v1/projects/{self.project}/messages:send":
            return _fcm_error(404, "NOT_FOUND", "Requested entity was not found."), None
        try:
            body = json.loads(raw)
            message = body["message"]
            token = message["token"]
        except (ValueError, KeyError, TypeError):
            return _fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."), None
        if not self._quota():
            return _fcm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests'",
                              "QUOTA_EXCEEDED"), body
        if not isinstance(token, str) or not token.startswith("fcm-"):
            return _fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token",
                              "INVALID_ARGUMENT"), body
        bad = [k for k, v in (message.get("data") or {}).items() if not isinstance(v, str)]
        if bad or len(raw) > 4096 + 512:
            field_name = f"message.data[{bad[0]}]" if bad else "message"
            violation = {"@type": "type.googleapis.com/google.rpc.BadRequest",
                         "fieldViolations": [{"field": field_name, "description": "Invalid value or message too big"}]}
            return _json(400, {"error": {"code": 400, "message": f"Invalid value at '{field_name}'",
                                         "status": "INVALID_ARGUMENT", "details": [violation]}}), body
        if token in self.dead_tokens:
            return _fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"), body
        if token in self.foreign_tokens:
            return _fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"), body
        if token in self.offline:
            self._store(token, message)
        name = f"projects/{self.project}/messages/{uuid.uuid4().int % 10**16}"
        return _json(200, {"name": name}), body

    def reset_quota(self) -> None:
        self._window = (0, 0)

    def _quota(self) -> bool:
        minute = int(self.clock() // 60)
        start, used = self._window
        if start != minute:
            used = 0
        if used >= self.quota_per_minute:
            self._window = (minute, used)
            return False
        self._window = (minute, used + 1)
        return True

    def _store(self, token: str, message: dict[str, Any]) -> None:
        key = (message.get("android") or {}).get("collapse_key")
        if key is None:
            kept = self.stored_plain.setdefault(token, [])
            kept.append(message)
            if len(kept) > self.MAX_STORED:
                kept.clear()  # FCM discards them all (and tells the app onDeletedMessages)
            return
        slots = self.offline[token]
        slots.pop(key, None)
        slots[key] = message  # the latest per key
        while len(slots) > self.MAX_COLLAPSE_KEYS:
            _, lost = slots.popitem(last=False)
            self.collapse_dropped.append(lost)

    def online(self, token: str) -> list[dict[str, Any]]:
        """The device reconnects: what FCM kept for it while it was offline."""
        kept = list(self.offline.pop(token, OrderedDict()).values()) + self.stored_plain.pop(token, [])
        return kept


# -- APNs ---------------------------------------------------------------------------------------


def _apns(status: int, reason: str, **extra: Any) -> Answer:
    return _json(status, {"reason": reason, **extra})


class ApnsStandIn:
    """`POST /3/device/<token>` over HTTP/2, as Apple documents it ("Sending notification
    requests to APNs", "Handling notification responses from APNs", "Establishing a
    token-based connection to APNs").

    - Provider token: an ES256 JWT with `kid` (the key id) and `iss` (the team id), `iat`.
      Missing: 403 MissingProviderToken; bad signature or claims: 403 InvalidProviderToken;
      `iat` more than an hour old: 403 ExpiredProviderToken. A new token less than 20 minutes
      after the team's previous one: 429 TooManyProviderTokenUpdates (Apple: refresh no more
      than once every 20 minutes, across the team's keys).
    - Headers: apns-topic (missing: 400 MissingTopic; not the app's: 400
      DeviceTokenNotForTopic), apns-push-type (400 InvalidPushType), apns-priority 1, 5 or 10
      (400 BadPriority), apns-id a UUID (400 BadMessageId), apns-collapse-id at most 64 bytes
      (400 BadCollapseId). Payload: empty 400 PayloadEmpty, over 4 KB 413 PayloadTooLarge.
    - Device token: not hex, 400 BadDeviceToken; no longer active, 410 Unregistered with a
      timestamp; too many requests for one device token, 429 TooManyRequests. 429s carry no
      Retry-After. Success: 200, empty body, `apns-id`.
    """

    MIN_TOKEN_INTERVAL = 20 * 60
    MAX_TOKEN_AGE = 60 * 60
    PUSH_TYPES = frozenset({"alert", "background", "location", "voip", "complication", "fileprovider", "mdm",
                            "liveactivity", "pushtotalk", "widgets", "controls"})

    def __init__(self, clock: Clock, public_key: str | None, key_id: str, team_id: str, topic: str) -> None:
        self.clock = clock
        self.public_key = public_key
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic
        self.dead_tokens: set[str] = set()
        #: at most this many requests per device token per second (then 429 TooManyRequests),
        #: unless `device_limits` names the token
        self.per_device_per_second = 1000
        self.device_limits: dict[str, int] = {}
        #: device token -> seconds APNs takes to answer for it (a slow stream among many)
        self.slow_tokens: dict[str, float] = {}
        #: APNs refuses tokens older than this (a test may shorten it, as a skewed clock would)
        self.max_token_age: float = self.MAX_TOKEN_AGE
        self.tokens_seen: dict[str, float] = {}
        self.token_updates_refused = 0
        self._current: str | None = None
        self._current_at = -math.inf
        self._per_device: dict[str, tuple[int, int]] = {}
        self._verified: dict[str, dict[str, Any] | None] = {}

    def forget_tokens(self) -> None:
        """A new test: no provider token seen yet."""
        self.tokens_seen.clear()
        self.token_updates_refused = 0
        self._current, self._current_at = None, -math.inf

    def _provider_token(self, headers: dict[str, str]) -> Answer | None:
        import jwt

        token = _bearer(headers.get("authorization"))
        if not token:
            return _apns(403, "MissingProviderToken")
        if token not in self._verified:
            try:
                claims = jwt.decode(token, self.public_key, algorithms=["ES256"], options={"verify_iat": False})
                ok = jwt.get_unverified_header(token).get("kid") == self.key_id and claims.get("iss") == self.team_id
                self._verified[token] = claims if ok and isinstance(claims.get("iat"), int) else None
            except Exception:
                self._verified[token] = None
        claims = self._verified[token]
        if claims is None:
            return _apns(403, "InvalidProviderToken")
        now = self.clock()
        if now - claims["iat"] > self.max_token_age:
            return _apns(403, "ExpiredProviderToken")
        if token != self._current:
            if now - self._current_at < self.MIN_TOKEN_INTERVAL:
                self.token_updates_refused += 1
                return _apns(429, "TooManyProviderTokenUpdates")
            self._current, self._current_at = token, now
            self.tokens_seen[token] = now
        return None

    def send(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[Answer, Any]:
        refused = self._provider_token(headers)
        if refused is not None:
            return refused, None
        device = path.rsplit("/", 1)[1]
        topic = headers.get("apns-topic")
        if not topic:
            return _apns(400, "MissingTopic"), None
        if topic != self.topic:
            return _apns(400, "DeviceTokenNotForTopic"), None
        if headers.get("apns-push-type") not in self.PUSH_TYPES:
            return _apns(400, "InvalidPushType"), None
        if headers.get("apns-priority", "10") not in ("1", "5", "10"):
            return _apns(400, "BadPriority"), None
        try:
            uuid.UUID(headers.get("apns-id") or str(uuid.uuid4()))
        except ValueError:
            return _apns(400, "BadMessageId"), None
        if len((headers.get("apns-collapse-id") or "").encode()) > 64:
            return _apns(400, "BadCollapseId"), None
        if not raw:
            return _apns(400, "PayloadEmpty"), None
        if len(raw) > 4096:
            return _apns(413, "PayloadTooLarge"), None
        if not device or any(c not in "0123456789abcdefABCDEF" for c in device):
            return _apns(400, "BadDeviceToken"), None
        if device in self.dead_tokens:
            return _apns(410, "Unregistered", timestamp=int(self.clock() * 1000)), None
        second = int(self.clock())
        at, n = self._per_device.get(device, (second, 0))
        n = n + 1 if at == second else 1
        self._per_device[device] = (second, n)
        if n > self.device_limits.get(device, self.per_device_per_second):
            return _apns(429, "TooManyRequests"), None
        try:
            body = json.loads(raw)
        except ValueError:
            return _apns(400, "BadPayload"), None  # not in Apple's list; our payloads are JSON
        return Answer(200, b"", {"apns-id": headers.get("apns-id", "")}, content_type="",
                      delay=self.slow_tokens.get(device, 0.0)), body


# -- the server ----------------------------------------------------------------------------------


class ProviderFake:
    def __init__(
        self,
        *,
        service_key: str = "service-key",
        anon_key: str = "anon-key",
        fcm_public_key: str | None = None,
        fcm_project: str = "edgefn-test",
        apns_public_key: str | None = None,
        apns_key_id: str = "KEYID12345",
        apns_team_id: str = "TEAMID1234",
        apns_topic: str = "com.example.app",
        port: int = 0,
        record_bodies: bool = True,
        serve: bool = True,
    ) -> None:
        self.clock: Clock = time.time
        self.record_bodies = record_bodies
        self.lock = threading.Lock()
        self.mode: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []
        now = lambda: self.clock()  # noqa: E731  (a test may replace self.clock later)
        self.realtime = RealtimeStandIn(now, {service_key: "service_role", anon_key: "anon"})
        self.fcm = FcmStandIn(now, fcm_public_key, fcm_project)
        self.apns = ApnsStandIn(now, apns_public_key, apns_key_id, apns_team_id, apns_topic)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if serve:
            self._serve_in_thread()

    # -- serving -------------------------------------------------------------------------------

    def _serve_in_thread(self) -> None:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            loop.set_exception_handler(lambda _loop, _ctx: None)  # a client hanging up mid-stream
            self._loop = loop
            self._stop = asyncio.Event()
            loop.call_soon(started.set)
            loop.run_until_complete(serve_app(asgi(self), self.port, self._stop))

        self.thread = threading.Thread(target=run, daemon=True, name="provider-stand-in")
        self.thread.start()
        started.wait(10)
        _wait_listening(self.port)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(10)

    # -- control --------------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.clock = time.time
            self.mode.clear()
            self.requests.clear()
            self.realtime.plan()
            self.fcm.dead_tokens.clear()
            self.fcm.foreign_tokens.clear()
            self.fcm.offline.clear()
            self.fcm.stored_plain.clear()
            self.fcm.collapse_dropped.clear()
            self.fcm.quota_per_minute = 600_000
            self.fcm.reset_quota()
            self.fcm.retry_after = None
            self.apns.dead_tokens.clear()
            self.apns.per_device_per_second = 1000
            self.apns.device_limits.clear()
            self.apns.slow_tokens.clear()
            self.apns.max_token_age = ApnsStandIn.MAX_TOKEN_AGE
            self.apns.forget_tokens()

    # -- what was received ------------------------------------------------------------------------

    def accepted(self, provider: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["provider"] == provider and r["status"] in (200, 202)]

    def attempts(self, provider: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["provider"] == provider]

    def broadcasts(self) -> list[dict[str, Any]]:
        """Realtime messages that went out, in arrival order."""
        with self.lock:
            return list(self.realtime.delivered)

    def pushes(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["provider"] in ("fcm", "apns") and r["status"] == 200]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            rt = self.realtime
            return {"realtime": {"answers": dict(rt.answers), "delivered": len(rt.delivered), "dropped": len(rt.dropped),
                                 "events_avg": rt.events.average(), "other_messages": rt.events.other_total,
                                 "other_seconds": self.clock() - rt.since,
                                 "max_events_per_second": rt.max_events},
                    "apns": {"tokens_seen": len(self.apns.tokens_seen),
                             "token_updates_refused": self.apns.token_updates_refused}}

    # -- the providers ----------------------------------------------------------------------------

    def _forced(self, provider: str) -> Answer | None:
        """An answer the test asked for: the provider's own 5xx or 429 shapes, or garbage."""
        mode = self.mode.get(provider, "ok")
        if isinstance(mode, (list, tuple)) and mode[0] == "garbage":
            _, status, ctype, body = mode
            return Answer(int(status), body.encode() if isinstance(body, str) else body, content_type=ctype)
        if mode == "fail":
            return {"realtime": _json(500, {"errors": {"detail": "Internal Server Error"}}),
                    "apns": _apns(500, "InternalServerError"),
                    }.get(provider) or _fcm_error(500, "INTERNAL", "Internal error encountered.", "INTERNAL",
                                                  **self._fcm_retry_after())
        if mode == "unavailable":
            return {"realtime": Answer(503, b"upstream unavailable", content_type="text/plain"),
                    "apns": _apns(503, "ServiceUnavailable"),
                    }.get(provider) or _fcm_error(503, "UNAVAILABLE", "The service is currently unavailable.",
                                                  "UNAVAILABLE", **self._fcm_retry_after())
        if mode == "throttle":
            return {"realtime": _json(429, {"message": "You have exceeded your rate limit"}),
                    "apns": _apns(429, "TooManyRequests"),
                    }.get(provider) or _fcm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", "QUOTA_EXCEEDED")
        return None

    def _fcm_retry_after(self) -> dict[str, str]:
        return {"retry-after": self.fcm.retry_after} if self.fcm.retry_after else {}

    def _delay(self, provider: str) -> float:
        mode = self.mode.get(provider)
        return float(mode[1]) if isinstance(mode, (list, tuple)) and mode[0] == "slow" else 0.0

    def _record(self, provider: str, answer: Answer, path: str, headers: dict[str, str], body: Any, **extra: Any) -> Answer:
        self.requests.append({
            "provider": provider, "status": answer.status, "path": path, "at": self.clock(),
            "headers": headers if self.record_bodies else {}, "body": body, **extra,
        })
        return answer

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes, http_version: str) -> Answer:
        if path == "/_mode":
            with self.lock:
                self.mode.update(json.loads(raw))
            return _json(200, {})
        if path == "/_reset":
            self.reset()
            return _json(200, {})
        if path == "/_realtime":
            with self.lock:
                self.realtime.plan(**json.loads(raw))
            return _json(200, {})
        if path == "/_records":
            with self.lock:
                return _json(200, self.requests)
        if path == "/_stats":
            return _json(200, self.stats())
        provider = ("realtime" if path == "/realtime/v1/api/broadcast" else "oauth" if path == "/token"
                    else "fcm" if path.startswith("/v1/projects/") else "apns" if path.startswith("/3/device/") else None)
        if provider is None:
            return _json(404, {"error": "no such path"})
        if provider == "apns" and http_version != "2":
            return Answer(505, b"APNs speaks HTTP/2 only", content_type="text/plain")
        with self.lock:
            forced = self._forced(provider)
            if forced is not None:
                token = path.rsplit("/", 1)[1] if provider == "apns" else _fcm_token(raw)
                answer = self._record(provider, forced, path, headers, _maybe_json(raw), token=token)
            elif provider == "realtime":
                answer, body = self.realtime.handle(headers, raw)
                answer = self._record("realtime", answer, path, headers, body)
            elif provider == "oauth":
                answer = self._record("oauth", self.fcm.token(self.url, raw), path, {}, None)
            elif provider == "fcm":
                answer, body = self.fcm.send(path, headers, raw)
                answer = self._record("fcm", answer, path, headers, body, token=_fcm_token(raw))
            else:
                answer, body = self.apns.send(path, headers, raw)
                answer = self._record("apns", answer, path, headers, body, token=path.rsplit("/", 1)[1])
        answer.delay = max(answer.delay, self._delay(provider))
        return answer


def _maybe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _fcm_token(raw: bytes) -> str | None:
    body = _maybe_json(raw)
    try:
        return str(body["message"]["token"])
    except (TypeError, KeyError):
        return None


def asgi(fake: ProviderFake) -> Any:
    """The stand-in as an ASGI app (hypercorn serves HTTP/1.1 and HTTP/2 on one port)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        answer = fake.handle(scope["method"], scope["path"], headers, b"".join(chunks), scope["http_version"])
        if answer.delay:
            await asyncio.sleep(answer.delay)
        out = [(b"content-length", str(len(answer.body)).encode())]
        if answer.content_type:
            out.append((b"content-type", answer.content_type.encode()))
        out += [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": out})
        await send({"type": "http.response.body", "body": answer.body})

    return app


async def serve_app(app: Any, port: int, stop: asyncio.Event) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 75
    config.h2_max_concurrent_streams = 1000  # APNs allows many concurrent streams per connection
    # APNs keeps a connection for hours; hypercorn's default closes one after 1,000 requests,
    # failing the streams in flight (the client would resend what was delivered)
    config.keep_alive_max_requests = 10**9
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--config", required=True, help="JSON: service_key, fcm_public_key, apns_public_key, ...")
    args = ap.parse_args()
    fake = ProviderFake(port=args.port, record_bodies=False, serve=False, **json.loads(args.config))
    print(fake.url, flush=True)
    asyncio.run(serve_app(asgi(fake), args.port, asyncio.Event()))


if __name__ == "__main__":
    main()
