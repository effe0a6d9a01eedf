"""The whole fleet on this machine: every function served by `bench.apps.fleet_app` in
several uvicorn worker processes sharing one Postgres, one Redis, one S3 stand-in (moto) and
one push / Realtime provider stand-in, configured through the same environment variables a
deployment sets. Used by the system benchmark (`edgefn bench`), the fault suite
(`pytest -m faults`) and the fuzzer (`pytest -m fuzz`).

    with fleet.providers() as prov, fleet.s3() as s3:
        f = fleet.Fleet.configure(dsn, redis_url, s3=s3, providers=prov)
        with f.serve(workers=2) as base_url:
            httpx.get(base_url + "/functions/v1/optimized-dashboard",
                      headers={"Authorization": "Bearer " + f.token(user_id)})
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench import harness
from bench.orchestrator import SERVICE_KEY  # the provider stand-in checks this key
from edgefn.tokens import _new_private_jwk, mint, public_jwks

APP = "bench.apps.fleet_app:app"
ISSUER = "http://127.0.0.1/auth/v1"
PAYSTACK_SECRET = "sk_test_fleet_" + "0" * 24
REVENUECAT_AUTH = "Bearer fleet-revenuecat-auth"
DRAIN_SECRET = "fleet-drain-secret"
DB_WEBHOOK_SECRET = "fleet-db-webhook-secret"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"fleet-orchestrator-secret-012345").decode()


@dataclass
class S3:
    endpoint: str
    bucket: str
    client: Any


@contextlib.contextmanager
def s3() -> Iterator[S3]:
    """moto's S3 server on a free port with one bucket (the R2 stand-in)."""
    import logging

    from bench.upload import moto_s3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
    bucket = f"fleet-media-{uuid.uuid4().hex[:8]}"
    with moto_s3(bucket) as (endpoint, client):
        yield S3(endpoint, bucket, client)


@dataclass
class Providers:
    url: str
    keys: dict[str, str]

    def mode(self, **modes: Any) -> None:
        """Tell the stand-in how to answer, e.g. mode(fcm="fail", apns="fail", realtime="ok")."""
        import httpx

        httpx.post(self.url + "/_mode", json=modes, timeout=5).raise_for_status()


@contextlib.contextmanager
def providers() -> Iterator[Providers]:
    """The tests' Realtime / FCM / APNs stand-in in its own process."""
    from bench.orchestrator import fake_providers, make_keys

    keys = make_keys()
    with fake_providers(keys, fcm_project="edgefn-fleet") as url:
        yield Providers(url, keys)


@dataclass
class Fleet:
    env: dict[str, str]
    key: dict[str, Any] = field(repr=False)

    @classmethod
    def configure(
        cls, dsn: str, redis_url: str, *, s3: S3 | None = None, providers: Providers | None = None,
        unlimited: bool = True, **overrides: str,
    ) -> Fleet:
        """The environment of every function. `unlimited` lifts the per-tier request limits
        (load tests measure the functions, not the limiter saying no)."""
        key = _new_private_jwk()
        env = {
            "DATABASE_URL": dsn, "REDIS_URL": redis_url, "KEY_PREFIX": "fleet:" + secrets.token_hex(4),
            "JWT_ISSUER": ISSUER, "SUPABASE_JWKS": json.dumps(public_jwks(key)),
            "PAYSTACK_SECRET_KEY": PAYSTACK_SECRET, "REVENUECAT_WEBHOOK_AUTH": REVENUECAT_AUTH,
            "ORCHESTRATOR_WEBHOOK_SECRETS": WEBHOOK_SECRET, "ORCHESTRATOR_DRAIN_SECRET": DRAIN_SECRET,
            "DB_WEBHOOK_SECRET": DB_WEBHOOK_SECRET, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
            "EDGEFN_ACCESS_LOG": "1",
        }  # fmt: skip
        if unlimited:
            big = str(10**9)
            env.update({"RATE_LIMIT_ANONYMOUS": big, "RATE_LIMIT_FREE": big, "RATE_LIMIT_PAID": big,
                        "RATE_LIMIT_ADMIN": big, "UPLOAD_HOURLY_FREE": big, "UPLOAD_DAILY_MIB_FREE": big,
                        "UPLOAD_HOURLY_PAID": big, "UPLOAD_DAILY_MIB_PAID": big,
                        "LIKES_PER_DAY_FREE": big, "LIKES_PER_DAY_PAID": big})  # fmt: skip
        if s3 is not None:
            env.update({"R2_ENDPOINT_URL": s3.endpoint, "R2_BUCKET": s3.bucket, "R2_ACCESS_KEY_ID": "bench",
                        "R2_SECRET_ACCESS_KEY": "bench", "R2_PUBLIC_URL": f"{s3.endpoint}/{s3.bucket}"})
        if providers is not None:
            account = {"type": "service_account", "project_id": "edgefn-fleet", "private_key_id": "k1",
                       "private_key": providers.keys["fcm_private"],
                       "client_email": "push@edgefn-fleet.iam.gserviceaccount.com"}
            env.update({
                "REALTIME_URL": providers.url, "FCM_SERVICE_ACCOUNT_JSON": json.dumps(account),
                "FCM_URL": providers.url, "FCM_TOKEN_URL": providers.url + "/token",
                "APNS_URL": providers.url, "APNS_KEY_ID": "KEYID12345",
                "APNS_TEAM_ID": "TEAMID1234", "APNS_TOPIC": "com.example.app",
                "APNS_PRIVATE_KEY": providers.keys["apns_private"],
            })  # fmt: skip
        env.update(overrides)
        return cls(env, key)

    def token(self, user_id: str, *, tier: str = "free", **claims: Any) -> str:
        return mint(self.key, user_id=user_id, tier=tier, issuer=ISSUER, **claims)

    @contextlib.contextmanager
    def serve(self, workers: int = 2, port: int | None = None) -> Iterator[str]:
        """uvicorn with `workers` processes; yields the base URL."""
        with harness.server(APP, self.env, workers=workers, ready_path="/stats", port=port) as p:
            yield f"http://127.0.0.1:{p}"


# -- signing what providers and our own functions send ------------------------------------------


def paystack_headers(body: bytes) -> dict[str, str]:
    sig = hmac.new(PAYSTACK_SECRET.encode(), body, hashlib.sha512).hexdigest()
    return {"content-type": "application/json", "x-paystack-signature": sig}


def revenuecat_headers() -> dict[str, str]:
    return {"content-type": "application/json", "authorization": REVENUECAT_AUTH}


def standard_webhook_headers(body: bytes, msg_id: str | None = None, ts: int | None = None) -> dict[str, str]:
    """Standard Webhooks signature, as our functions sign events for the orchestrator."""
    msg_id = msg_id or "msg_" + uuid.uuid4().hex
    ts = int(time.time()) if ts is None else ts
    secret = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(secret, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": f"v1,{sig}"}
