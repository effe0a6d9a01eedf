"""Standard Webhooks secrets are read as the spec's reference library reads them (with or
without `whsec_`, then base64, padding optional), checked against that library itself; a
secret that is not valid fails when the settings load, naming the key and not the value."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from functions.realtime_orchestrator.settings import RealtimeOrchestratorSettings
from functions.realtime_orchestrator.signatures import secret_bytes, sign, signature, verify_standard
from shared import errors
from shared.settings import ConfigError


def spellings(key: bytes) -> list[str]:
    """Every way a sender may write the secret for `key`."""
    padded = base64.b64encode(key).decode()
    bare = padded.rstrip("=")
    return [f"whsec_{padded}", padded, f"whsec_{bare}", bare]


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=1, max_size=64), msg_id=st.text(st.characters(codec="ascii", exclude_characters="."), min_size=1, max_size=40),
       body=st.binary(max_size=512), ts=st.integers(0, 2**33))
def test_every_spelling_signs_as_the_reference_library(key: bytes, msg_id: str, body: bytes, ts: int) -> None:
    reference = Webhook(key)  # the raw key: what every spelling must stand for
    expected = reference.sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode("latin-1"))
    for secret in spellings(key):
        assert secret_bytes(secret) == key, secret
        # the reference library itself agrees on each spelling
        assert Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode("latin-1")) == expected
        if body.decode("latin-1").encode() == body:  # the library signs text; ours signs bytes
            assert signature(secret, msg_id, ts, body) == expected


@pytest.mark.parametrize("spelling", range(4))
def test_reference_signed_messages_verify_and_ours_verify_there(spelling: int) -> None:
    key = b"a shared key of thirty-two bytes"
    secret = spellings(key)[spelling]
    body = b'{"type":"like.received","recipients":[]}'
    now = time.time()
    ts = datetime.fromtimestamp(int(now), tz=UTC)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now)),
               "webhook-signature": Webhook(secret).sign("msg_1", ts, body.decode())}
    assert verify_standard([secret], headers, body, now=now) == "msg_1"
    ours = sign(secret, "msg_2", body, timestamp=int(now))
    assert Webhook(secret).verify(body, ours) == {"type": "like.received", "recipients": []}
    # the same secret written another way verifies the same signature
    assert verify_standard([spellings(key)[(spelling + 1) % 4]], ours, body, now=now) == "msg_2"


def test_a_prefixless_secret_is_base64_not_raw_bytes() -> None:
    """Before, a secret without `whsec_` keyed the HMAC with its own characters; a sender
    using a reference library (which decodes it) was refused."""
    secret = "c2VjcmV0LWtleS1mb3ItdGhlLW9yY2hlc3RyYXRvcg"  # unpadded, no prefix
    body = b"{}"
    now = int(time.time())
    headers = {"webhook-id": "m", "webhook-timestamp": str(now),
               "webhook-signature": Webhook(secret).sign("m", datetime.fromtimestamp(now, tz=UTC), "{}")}
    assert verify_standard([secret], headers, body, now=now) == "m"
    keyed_by_text = hmac.new(secret.encode(), b"m.%d.{}" % now, hashlib.sha256).digest()
    old_style = {**headers, "webhook-signature": "v1," + base64.b64encode(keyed_by_text).decode()}
    with pytest.raises(errors.Unauthenticated):
        verify_standard([secret], old_style, body, now=now)


@pytest.mark.parametrize("bad", [
    "whsec_", "", "not base64!", "whsec_c2VjcmV0$", "a", "whsec_QUJDRA===", "whsec_QUJD-_xx", "whsec_ c2VjcmV0",
])
def test_an_invalid_secret_fails_at_load_naming_the_key(bad: str) -> None:
    good = "whsec_" + base64.b64encode(b"k" * 24).decode()
    with pytest.raises(ConfigError) as info:
        RealtimeOrchestratorSettings.load(env={"ORCHESTRATOR_WEBHOOK_SECRETS": f"{good},{bad}x" if bad == "" else f"{good},{bad}"})
    message = str(info.value)
    assert "ORCHESTRATOR_WEBHOOK_SECRETS" in message and "secret 2 of 2" in message
    assert good not in message
    if len(bad) > len("whsec_"):  # shorter ones are words of the message itself
        assert bad not in message


def test_valid_spellings_load() -> None:
    key = b"k" * 24
    s = RealtimeOrchestratorSettings.load(env={"ORCHESTRATOR_WEBHOOK_SECRETS": ",".join(spellings(key))})
    assert [secret_bytes(x) for x in s.orchestrator_webhook_secrets] == [key] * 4
