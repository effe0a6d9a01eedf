"""Who may post events: our own functions (Standard Webhooks signatures) and Supabase
database webhooks (a configured secret header). Everything else is a 401.

Standard Webhooks: the signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`,
HMAC-SHA256 keyed with the secret's bytes, sent as a space-separated list of
`v1,<base64>` in `webhook-signature` (several, so a secret can be rotated). The timestamp
must be within the tolerance of now (replays of old messages are refused). A secret is read
as the spec's reference libraries read it: an optional `whsec_` prefix, then base64 (the
padding may be left off, as the Python reference library allows); the settings refuse one
that is not, naming the key, so a bad secret never reaches a request.

    headers = sign("whsec_...", msg_id, body)          # what a sender adds
    verify_standard(secrets, headers, body, now=time.time())
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence

from shared import errors
from shared.auth import secret_matches


PREFIX = "whsec_"
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: `whsec_` (optional) + base64, with or
    without its padding. ValueError, without the secret in the message, when it is not."""
    encoded = secret.removeprefix(PREFIX)
    bare = encoded.rstrip("=")
    if not _BASE64.fullmatch(encoded) or len(bare) % 4 == 1:
        raise ValueError("not base64 (standard alphabet) after the optional whsec_ prefix")
    return base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)


def signature(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three headers a sender adds to `body`."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature(secret, msg_id, ts, body)}


def _refuse(message: str, code: str) -> errors.Unauthenticated:
    return errors.Unauthenticated(message, code=code)


def verify_standard(
    secrets: Sequence[str], headers: Mapping[str, str], body: bytes, *, now: float, tolerance: int = 300
) -> str:
    """The verified message id, or a 401 domain error."""
    msg_id = headers.get("webhook-id", "")
    ts_raw = headers.get("webhook-timestamp", "")
    sig_header = headers.get("webhook-signature", "")
    if not msg_id or not ts_raw or not sig_header:
        raise _refuse("webhook-id, webhook-timestamp and webhook-signature are required", "SIGNATURE_MISSING")
    if not secrets:
        raise _refuse("signed events are not accepted: no secret is configured", "SIGNATURE_INVALID")
    if len(msg_id) > 256:
        raise _refuse("webhook-id is too long", "SIGNATURE_INVALID")
    try:
        ts = int(ts_raw)
    except ValueError:
        raise _refuse("webhook-timestamp must be Unix seconds", "SIGNATURE_INVALID") from None
    if abs(now - ts) > tolerance:
        raise _refuse("webhook-timestamp is outside the tolerance", "SIGNATURE_EXPIRED")
    offered = [part.split(",", 1)[1] for part in sig_header.split() if part.startswith("v1,")]
    matched = False
    for secret in secrets:
        expected = signature(secret, msg_id, ts, body).split(",", 1)[1].encode()
        for candidate in offered:
            # every comparison runs: the time taken says nothing about which one matched
            matched |= hmac.compare_digest(expected, candidate.encode())
    if not matched:
        raise _refuse("no signature matches", "SIGNATURE_INVALID")
    return msg_id


def verify_secret_header(expected: str | None, offered: str | None) -> None:
    """A configured shared secret (database webhooks), constant time."""
    if not secret_matches(offered, (expected,)):
        raise _refuse("the secret is missing or wrong", "SECRET_INVALID")
