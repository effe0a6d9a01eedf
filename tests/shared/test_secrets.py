"""Secrets read at run time (`shared.secrets`), through the same settings classes, against
moto's Secrets Manager: directly (boto3) and through a stand-in for the AWS Parameters and
Secrets Lambda Extension that speaks its localhost protocol, is not ready at first (as at
Lambda init), checks the session token, records what it was asked, and reads moto."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared import secrets
from shared.settings import ConfigError, CoreSettings

SESSION_TOKEN = "session-token-of-this-instance"
STORED = {"DATABASE_URL": "postgresql://app:pw@pooler.example:6543/postgres", "upstash-redis-rest-token": "tok-1",
          "SUPABASE_URL": "https://from-store.supabase.co"}


@pytest.fixture
def aws(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's Secrets Manager holding one secret per test; fake credentials."""
    import uuid

    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "eu-west-1",
                 "AWS_ENDPOINT_URL": s3_endpoint, "AWS_SESSION_TOKEN": SESSION_TOKEN}.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=s3_endpoint)
    name = f"edgefn/test-{uuid.uuid4().hex[:8]}"
    client.create_secret(Name=name, SecretString=json.dumps(STORED))
    client.secret_name = name  # type: ignore[attr-defined]
    secrets.clear()
    yield client
    secrets.clear()
    client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


class FakeExtension:
    """Answers GET /secretsmanager/get?secretId= like the extension: 400 "not ready" for the
    first `not_ready` requests, 401 without the session token, else moto's answer."""

    def __init__(self, client: Any, not_ready: int) -> None:
        self.requests: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = urllib.parse.urlsplit(self.path)
                outer.requests.append({"path": url.path, **dict(urllib.parse.parse_qsl(url.query)),
                                       "token": self.headers.get("X-Aws-Parameters-Secrets-Token", "")})
                if len(outer.requests) <= not_ready:
                    return self._answer(400, b"not ready to serve traffic, please wait")
                if self.headers.get("X-Aws-Parameters-Secrets-Token") != SESSION_TOKEN:
                    return self._answer(401, b"unauthorized")
                found = client.get_secret_value(SecretId=outer.requests[-1]["secretId"])
                self._answer(200, json.dumps({k: found[k] for k in ("ARN", "Name", "SecretString", "VersionId")}).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_settings_read_the_secret_from_the_api_once_per_process(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFN_SECRETS", f"aws-secretsmanager:{aws.secret_name}")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SUPABASE_URL", "https://from-env.supabase.co")
    s = CoreSettings.load()
    assert s.database_url == STORED["DATABASE_URL"]
    assert s.upstash_redis_rest_token == "tok-1"  # dashed keys name the same setting
    assert s.supabase_url == "https://from-env.supabase.co"  # the environment wins over the store
    # kept for the process: a rotation reaches new instances, not this one
    aws.put_secret_value(SecretId=aws.secret_name, SecretString=json.dumps({**STORED, "upstash-redis-rest-token": "tok-2"}))
    assert CoreSettings.load().upstash_redis_rest_token == "tok-1"
    secrets.clear()
    assert CoreSettings.load().upstash_redis_rest_token == "tok-2"


def test_through_the_extension_waiting_for_it_to_be_ready(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ext = FakeExtension(aws, not_ready=3)
    try:
        monkeypatch.setenv("EDGEFN_SECRETS", f"aws-secretsmanager:{aws.secret_name}")
        monkeypatch.setenv("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", str(ext.port))
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the API is not used
        assert CoreSettings.load().database_url == STORED["DATABASE_URL"]
        CoreSettings.load()
        assert len(ext.requests) == 4  # three "not ready", one answer, none after
        assert {r["secretId"] for r in ext.requests} == {aws.secret_name}
        assert {r["path"] for r in ext.requests} == {"/secretsmanager/get"}
        assert {r["token"] for r in ext.requests} == {SESSION_TOKEN}
    finally:
        ext.close()


def test_an_extension_that_never_gets_ready_falls_back_to_the_api(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ext = FakeExtension(aws, not_ready=10_000)
    try:
        monkeypatch.setattr(secrets, "EXTENSION_WAIT_S", 0.2)
        monkeypatch.setenv("EDGEFN_SECRETS", f"aws-secretsmanager:{aws.secret_name}")
        monkeypatch.setenv("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", str(ext.port))
        assert CoreSettings.load().database_url == STORED["DATABASE_URL"]
        assert ext.requests
    finally:
        ext.close()


def test_an_extension_refusal_fails_init_naming_the_secret(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ext = FakeExtension(aws, not_ready=0)
    try:
        monkeypatch.setenv("EDGEFN_SECRETS", f"aws-secretsmanager:{aws.secret_name}")
        monkeypatch.setenv("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", str(ext.port))
        monkeypatch.setenv("AWS_SESSION_TOKEN", "another-instance")
        with pytest.raises(ConfigError, match=r"EDGEFN_SECRETS: the secrets extension refused .*401"):
            CoreSettings.load()
    finally:
        ext.close()


@pytest.mark.parametrize(("stored", "reference", "message"), [
    (None, "aws-secretsmanager:edgefn/absent", r"cannot read secret 'edgefn/absent'"),
    ("not json", None, r"is not a JSON object"),
    ('["a list"]', None, r"is not a JSON object"),
    (None, "ssm:/edgefn/prod", r"must look like aws-secretsmanager:<secret id>"),
])
def test_unreadable_secrets_fail_init_without_leaking_values(
    aws: Any, monkeypatch: pytest.MonkeyPatch, stored: str | None, reference: str | None, message: str
) -> None:
    if stored is not None:
        aws.put_secret_value(SecretId=aws.secret_name, SecretString=stored)
    monkeypatch.setenv("EDGEFN_SECRETS", reference or f"aws-secretsmanager:{aws.secret_name}")
    with pytest.raises(ConfigError, match=message) as info:
        CoreSettings.load()
    assert str(info.value).startswith("EDGEFN_SECRETS: ")
    assert "pw@" not in str(info.value) and "tok-1" not in str(info.value)
