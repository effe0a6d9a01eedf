"""What reaches Sentry: a function raising in the middle of a payment, with the payer's
email, name, phone, IP, card digits, authorization code, the caller's token and our secrets
in its locals, its payload, its log lines and the request's headers, reports to a local fake
Sentry over real HTTP; none of those values arrives. Plus the scrubber's rules, property-tested."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.scrub import FILTERED, scrub_event, scrub_text, sensitive_key
from tests.shared.test_observability import Recorder

REPO = Path(__file__).resolve().parents[2]

PLANTED = {
    "email": "zenobia.q@example.org",
    "first_name": "Zenobia",
    "last_name": "Quillfeather",
    "account_name": "ZENOBIA QUILLFEATHER",
    "phone": "+2348012345678",
    "ip": "198.51.100.77",
    "ipv6": "2001:db8:4:5::77",
    "card": "4084084084084081",
    "authorization_code": "AUTH_8dfhjjdt",
    "card_signature": "SIG_yEXu7dLBeqG0kU7g95Ke",
    "token": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ6ZW5vYmlhIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg",
    "paystack_key": "sk_test_3f9a0c1e2b4d6f8a1c3e5d7f",
    "origin_secret": "origin-secret-5f1e9d2c7b3a4e6f8091a2b3c4d5e6f7",
    "cookie": "sb-refresh-7c4e2a9f1b3d5e8a",
    "lat": "6.524379",
}
#: card fields checked by key (a 4-digit value could appear anywhere, in a timestamp)
CARD_KEYS = ("last4", "bin", "exp_month", "exp_year")

CHILD = r"""
import asyncio, json, logging, sys
import httpx
from shared.app import FunctionApp
from shared.settings import CoreSettings

P = json.loads(sys.stdin.read())  # not argv: Sentry reports the command line
fn = FunctionApp("pay", settings=CoreSettings)

@fn.post("/charge", auth="public")
async def charge(ctx):
    import sentry_sdk

    customer = {"first_name": P["first_name"], "last_name": P["last_name"], "email": P["email"], "phone": P["phone"]}
    authorization = {"authorization_code": P["authorization_code"], "last4": "4081", "bin": "408408",
                     "exp_month": "09", "exp_year": "2031", "signature": P["card_signature"],
                     "account_name": P["account_name"], "card_type": "visa"}
    client_ip, ipv6, card, secret = P["ip"], P["ipv6"], P["card"], P["paystack_key"]
    bearer = ctx.headers.get("authorization")
    logging.getLogger("edgefn.payments").warning(
        "charging %s %s <%s> from %s, card %s", customer["first_name"], customer["last_name"], customer["email"], client_ip, card)
    sentry_sdk.set_context("payment", {"customer": customer, "authorization": authorization})
    sentry_sdk.set_extra("request_url", "/functions/v1/pay/charge?lat=" + P["lat"] + "&limit=5")
    sentry_sdk.set_user({"id": "u-1", "email": customer["email"], "ip_address": client_ip})
    raise RuntimeError(
        f"charge failed for {customer['first_name']} {customer['last_name']} <{customer['email']}> "
        f"from {client_ip} / {ipv6}: card {card}, code {authorization['authorization_code']}, "
        f"with {bearer} and {secret}"
    )

async def main():
    headers = {"authorization": "Bearer " + P["token"], "x-origin-verify": P["origin_secret"],
               "cookie": "sb-refresh=" + P["cookie"], "cloudfront-viewer-address": P["ip"] + ":4444"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fn), base_url="http://t") as c:
        r = await c.post("/charge", headers=headers, json={"email": P["email"]})
    import sentry_sdk
    sentry_sdk.flush(timeout=5)
    print(json.dumps({"status": r.status_code}))

asyncio.run(main())
"""


@pytest.fixture
def fake_sentry() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.server.shutdown()


def envelope_items(body: bytes) -> list[Any]:
    """The JSON documents of a Sentry envelope (header, item headers, payloads)."""
    docs = []
    for line in body.splitlines():
        try:
            docs.append(json.loads(line))
        except ValueError:
            continue
    return docs


def walk(doc: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield k, v
            yield from walk(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from walk(v)


def test_none_of_the_planted_values_reaches_sentry(fake_sentry: Recorder) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "EDGEFN_ACCESS_LOG": "0",
           "SENTRY_DSN": f"http://publickey@127.0.0.1:{fake_sentry.port}/1"}
    out = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(PLANTED), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"status": 500}
    bodies = [gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b for b in fake_sentry.bodies]
    received = b"\n".join(bodies).decode("utf-8", "replace")
    # the report did arrive, and it is the right one
    events = [d for b in bodies for d in envelope_items(b) if isinstance(d, dict) and "exception" in d]
    assert len(events) == 1, received[:2000]
    event = events[0]
    [exc] = event["exception"]["values"]
    assert exc["type"] == "RuntimeError" and exc["value"].startswith("charge failed for ")
    assert FILTERED in exc["value"]
    # nothing planted arrived, anywhere in anything sent
    for name, value in PLANTED.items():
        assert value.lower() not in received.lower(), f"{name} reached Sentry"
    # no frame carries its local variables
    frames = [f for _, st_ in walk(event) if isinstance(st_, dict) for f in st_.get("frames", [])]
    assert frames and not any("vars" in f for f in frames)
    # the card fields, by key, wherever they are
    for key, value in walk(event):
        if key in CARD_KEYS:
            assert value == FILTERED, (key, value)


# -- the rules ---------------------------------------------------------------------------------

luhn_cards = st.lists(st.integers(0, 9), min_size=12, max_size=18).map(
    lambda ds: "".join(map(str, ds)) + str(_check_digit(ds))
)


def _check_digit(digits: list[int]) -> int:
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return (10 - total % 10) % 10


words = st.text(st.characters(codec="ascii", categories=("L",)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(prefix=words, suffix=words, secret=st.one_of(
    st.emails(), st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).filter(lambda a: not a.is_unspecified).map(str), luhn_cards,
))
def test_emails_addresses_and_card_numbers_never_survive(prefix: str, suffix: str, secret: str) -> None:
    text = f"{prefix} {secret} {suffix}"
    assert secret not in scrub_text(text)


@pytest.mark.parametrize("kept", [
    "GET /functions/v1/recommendations?limit=20 took 12.5 ms at 13:24:25",
    "user 00000000-0000-4000-8000-000000000001 request 8b0f3c522d0a4c8e9a556c1b",
    "sentry-python 2.75.0 on CPython 3.11.7",
])
def test_ordinary_text_is_left_alone(kept: str) -> None:
    assert scrub_text(kept) == kept


@pytest.mark.parametrize(("key", "sensitive"), [
    ("email", True), ("customer_email", True), ("first_name", True), ("accountName", False), ("account_name", True),
    ("x-origin-verify", True), ("Authorization", True), ("authorization_code", True), ("last4", True),
    ("client_ip", True), ("cloudfront-viewer-address", True), ("lat", True), ("session_id", True),
    ("route", False), ("status", False), ("request_id", False), ("tier", False), ("type", False),
])
def test_sensitive_keys(key: str, sensitive: bool) -> None:
    assert sensitive_key(key) is sensitive


def test_sdk_sections_keep_their_structure() -> None:
    event = {
        "sdk": {"name": "sentry.python", "version": "2.75.0"},
        "contexts": {"runtime": {"name": "CPython"}, "order": {"name": "Zenobia"}},
        "tags": {"function": "pay", "request_id": "abc"},
    }
    out = scrub_event(event)
    assert out["sdk"] == event["sdk"] and out["contexts"]["runtime"] == {"name": "CPython"}
    assert out["contexts"]["order"] == {"name": FILTERED} and out["tags"] == event["tags"]
