"""A local stand-in for Supabase Realtime, Google's OAuth token endpoint, FCM HTTP v1 and APNs,
over real HTTP (HTTP/1.1 keep-alive). It checks what a real provider checks (the service key,
the OAuth bearer it issued, the APNs provider JWT and headers), records every request, and
can be told to fail (500), throttle (429 + Retry-After), be slow, or treat tokens as dead.

    fake = ProviderFake(apns_public_key=pem, fcm_public_key=pem, service_key="svc")
    fake.mode["fcm"] = "fail"            # "ok" | "fail" | "throttle" | ("slow", seconds)
    fake.dead_tokens.add("tok-1")
    fake.broadcasts()                    # accepted Realtime messages, in arrival order
    fake.pushes()                        # accepted pushes: dicts with provider, token, body, headers

Also runnable as a process served by uvicorn (the benchmark): `python -m
tests.functions.realtime_orchestrator.fakes --port N --config JSON`; then `GET /_records`,
`POST /_mode` ({"provider": mode}), `POST /_reset`.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ProviderFake:
    def __init__(
        self,
        *,
        service_key: str = "service-key",
        fcm_public_key: str | None = None,
        apns_public_key: str | None = None,
        apns_key_id: str = "KEYID12345",
        apns_team_id: str = "TEAMID1234",
        apns_topic: str = "com.example.app",
        port: int = 0,
        record_bodies: bool = True,
        serve: bool = True,
    ) -> None:
        self.service_key = service_key
        self.fcm_public_key = fcm_public_key
        self.apns_public_key = apns_public_key
        self.apns_key_id = apns_key_id
        self.apns_team_id = apns_team_id
        self.apns_topic = apns_topic
        self.record_bodies = record_bodies
        self.lock = threading.Lock()
        self.mode: dict[str, Any] = {}
        self.retry_after = "1"
        self.dead_tokens: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self.issued: set[str] = set()
        self._verified_jwts: dict[str, bool] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms stalls

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/_records":
                    with outer.lock:
                        body = json.dumps(outer.requests).encode()
                    self._send(200, body)
                else:
                    self._send(404, b"{}")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, headers = outer.handle(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                self._send(status, body, headers)

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.url = f"http://127.0.0.1:{port}"
        if serve:
            self.server = Server(("127.0.0.1", port), Handler)
            self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
            self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
            self.thread.start()

    # -- control ----------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.mode.clear()
            self.dead_tokens.clear()
            self.requests.clear()
            self.retry_after = "1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what was received -------------------------------------------------------------------

    def accepted(self, provider: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["provider"] == provider and r["status"] in (200, 202)]

    def attempts(self, provider: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["provider"] == provider]

    def broadcasts(self) -> list[dict[str, Any]]:
        """Accepted Realtime messages, in arrival order."""
        return [m for r in self.accepted("realtime") for m in r["body"]["messages"]]

    def pushes(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["provider"] in ("fcm", "apns") and r["status"] == 200]

    # -- the providers -------------------------------------------------------------------------

    def _mode(self, provider: str) -> tuple[int, bytes, dict[str, str]] | None:
        mode = self.mode.get(provider, "ok")
        if isinstance(mode, (list, tuple)) and mode[0] == "slow":
            time.sleep(float(mode[1]))
            return None
        if mode == "fail":
            return 500, b'{"error": "internal"}', {}
        if mode == "throttle":
            return 429, b'{"error": "too many requests"}', {"retry-after": self.retry_after}
        return None

    def _record(self, provider: str, status: int, path: str, headers: dict[str, str], body: Any, **extra: Any) -> None:
        with self.lock:
            self.requests.append({
                "provider": provider, "status": status, "path": path, "at": time.time(),
                "headers": headers if self.record_bodies else {}, "body": body, **extra,
            })

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        if path == "/_mode":
            with self.lock:
                self.mode.update(json.loads(raw))
            return 200, b"{}", {}
        if path == "/_reset":
            self.reset()
            return 200, b"{}", {}
        if path == "/realtime/v1/api/broadcast":
            return self._realtime(path, headers, raw)
        if path == "/token":
            return self._token(raw)
        if path.startswith("/v1/projects/") and path.endswith("/messages:send"):
            return self._fcm(path, headers, raw)
        if path.startswith("/3/device/"):
            return self._apns(path, headers, raw)
        return 404, b'{"error": "no such path"}', {}

    def _realtime(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        if headers.get("apikey") != self.service_key or headers.get("authorization") != f"Bearer {self.service_key}":
            self._record("realtime", 401, path, headers, None)
            return 401, b'{"message": "invalid key"}', {}
        body = json.loads(raw)
        forced = self._mode("realtime")
        if forced is not None:
            self._record("realtime", forced[0], path, headers, body)
            return forced
        self._record("realtime", 202, path, headers, body)
        return 202, b"", {}

    def _token(self, raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        import jwt

        form = dict(urllib.parse.parse_qsl(raw.decode()))
        try:
            assert form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer"
            claims = jwt.decode(form["assertion"], self.fcm_public_key, algorithms=["RS256"], audience=self.url + "/token")
            assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
        except Exception as exc:
            self._record("oauth", 400, "/token", {}, None, error=repr(exc))
            return 400, b'{"error": "invalid_grant"}', {}
        token = f"ya29.fake-{len(self.issued) + 1}"
        with self.lock:
            self.issued.add(token)
        self._record("oauth", 200, "/token", {}, {"iss": claims["iss"]})
        return 200, json.dumps({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).encode(), {}

    def _fcm(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.issued:
            self._record("fcm", 401, path, headers, None)
            return 401, json.dumps({"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "bad token"}}).encode(), {}
        body = json.loads(raw)
        forced = self._mode("fcm")
        if forced is not None:
            self._record("fcm", forced[0], path, headers, body, token=body["message"]["token"])
            return forced
        token = body["message"]["token"]
        if token in self.dead_tokens:
            self._record("fcm", 404, path, headers, body, token=token)
            err = {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
                             "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                          "errorCode": "UNREGISTERED"}]}}
            return 404, json.dumps(err).encode(), {}
        self._record("fcm", 200, path, headers, body, token=token)
        return 200, json.dumps({"name": f"{path.split('/messages')[0]}/messages/{len(self.requests)}"}).encode(), {}

    def _apns_auth_ok(self, headers: dict[str, str]) -> bool:
        import jwt

        auth = headers.get("authorization", "")
        if not auth.startswith("bearer "):
            return False
        token = auth[7:]
        ok = self._verified_jwts.get(token)
        if ok is None:
            try:
                header = jwt.get_unverified_header(token)
                claims = jwt.decode(token, self.apns_public_key, algorithms=["ES256"])
                ok = header.get("kid") == self.apns_key_id and claims.get("iss") == self.apns_team_id and "iat" in claims
            except Exception:
                ok = False
            self._verified_jwts[token] = ok
        return ok and headers.get("apns-topic") == self.apns_topic and headers.get("apns-push-type") == "alert" \
            and headers.get("apns-priority") in ("5", "10") and bool(headers.get("apns-id"))

    def _apns(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        token = path.rsplit("/", 1)[1]
        if not self._apns_auth_ok(headers):
            self._record("apns", 403, path, headers, None, token=token)
            return 403, b'{"reason": "InvalidProviderToken"}', {}
        body = json.loads(raw)
        forced = self._mode("apns")
        if forced is not None:
            self._record("apns", forced[0], path, headers, body, token=token)
            return forced
        if token in self.dead_tokens:
            self._record("apns", 410, path, headers, body, token=token)
            return 410, json.dumps({"reason": "Unregistered", "timestamp": int(time.time() * 1000)}).encode(), {}
        if not all(c in "0123456789abcdefABCDEF" for c in token):
            self._record("apns", 400, path, headers, body, token=token)
            return 400, b'{"reason": "BadDeviceToken"}', {}
        self._record("apns", 200, path, headers, body, token=token)
        return 200, b"", {"apns-id": headers.get("apns-id", "")}


def asgi(fake: ProviderFake) -> Any:
    """The same fake as an ASGI app (uvicorn serves it far faster than http.server's threads:
    the benchmark's providers must not be its bottleneck)."""

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
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] == "GET" and scope["path"] == "/_records":
            with fake.lock:
                status, body, extra = 200, json.dumps(fake.requests).encode(), {}
        else:
            status, body, extra = fake.handle(scope["path"], headers, b"".join(chunks))
        out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        out += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--config", required=True, help="JSON: service_key, fcm_public_key, apns_public_key, ...")
    args = ap.parse_args()
    fake = ProviderFake(port=args.port, record_bodies=False, serve=False, **json.loads(args.config))
    print(fake.url, flush=True)
    uvicorn.run(asgi(fake), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
