"""Token verification against a JWKS served over real HTTP, and the principal cache."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import jwt
import pytest

from shared import errors
from shared.auth import PrincipalCache, TokenVerifier, bearer_token
from shared.context import Principal
from shared.settings import CoreSettings
from tests.conftest import HS_SECRET, ISSUER


def verifier(jwks_url: str, **over: Any) -> TokenVerifier:
    values = {"jwt_issuer": ISSUER, "supabase_jwks_url": jwks_url, **over}
    return TokenVerifier(CoreSettings.load(env={}, **values))


async def expect_code(v: TokenVerifier, token: str, code: str) -> errors.AppError:
    with pytest.raises(errors.Unauthenticated) as info:
        await v.verify(token)
    assert info.value.code == code
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer ")
    return info.value


async def test_es256_token_verified_once_then_cached(jwks_server: Any, make_token: Any) -> None:
    v = verifier(jwks_server.url)
    before = jwks_server.hits
    token = make_token("11111111-1111-4111-8111-111111111111", tier="paid")
    p = await v.verify(token)
    assert isinstance(p, Principal)
    assert (p.user_id, p.role, p.tier_hint) == ("11111111-1111-4111-8111-111111111111", "authenticated", "paid")
    assert jwks_server.hits == before + 1
    for _ in range(50):
        assert await v.verify(token) == p
    assert jwks_server.hits == before + 1  # zero network calls for a repeated token
    assert v.verifications == 1  # and no signature work either


async def test_rejections_have_stable_codes(jwks_server: Any, make_token: Any, signing_key: Any) -> None:
    v = verifier(jwks_server.url)
    await expect_code(v, make_token(expires_in=-120), "TOKEN_EXPIRED")
    await expect_code(v, make_token(issuer="https://other.supabase.co/auth/v1"), "TOKEN_ISSUER_MISMATCH")
    await expect_code(v, make_token(audience="somebody-else"), "TOKEN_AUDIENCE_MISMATCH")
    await expect_code(v, make_token(role="supabase_admin"), "TOKEN_ROLE_NOT_ALLOWED")
    await expect_code(v, "not-a-jwt", "TOKEN_MALFORMED")
    # alg "none"
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    claims = {"sub": "x", "role": "authenticated", "aud": "authenticated", "iss": ISSUER, "exp": time.time() + 60}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    await expect_code(v, f"{header}.{payload}.", "TOKEN_ALG_NOT_ALLOWED")
    # HS256 when only asymmetric keys are configured
    await expect_code(v, make_token(alg="HS256"), "TOKEN_ALG_NOT_ALLOWED")
    # a tampered signature
    good = make_token()
    head, body, sig = good.split(".")
    flipped = sig[:10] + ("B" if sig[10] == "A" else "A") + sig[11:]  # one bit pattern changed, always
    await expect_code(v, f"{head}.{body}.{flipped}", "TOKEN_INVALID")
    # not yet valid
    await expect_code(v, make_token(extra={"nbf": int(time.time()) + 600}), "TOKEN_NOT_YET_VALID")


async def test_hs256_only_with_configured_secret(jwks_server: Any, make_token: Any) -> None:
    v = verifier(jwks_server.url, supabase_jwt_secret=HS_SECRET)
    p = await v.verify(make_token("22222222-2222-4222-8222-222222222222", alg="HS256"))
    assert p is not None and p.user_id == "22222222-2222-4222-8222-222222222222"
    await expect_code(v, make_token(alg="HS256", secret="another-projects-secret-xxxxxxxxxxxxxxxxx"), "TOKEN_INVALID")


async def test_anon_key_is_anonymous_not_an_error(jwks_server: Any, make_token: Any) -> None:
    v = verifier(jwks_server.url)
    assert await v.verify(make_token(role="anon", audience="authenticated")) is None


async def test_unknown_kid_refetches_once_per_cooldown(jwks_server: Any, make_token: Any) -> None:
    from edgefn.tokens import _new_private_jwk, mint

    v = verifier(jwks_server.url, jwks_refresh_cooldown_seconds=3600)
    await v.verify(make_token())  # first fetch
    hits = jwks_server.hits
    rogue = _new_private_jwk()
    for _ in range(20):
        await expect_code(v, mint(rogue, user_id="33333333-3333-4333-8333-333333333333", issuer=ISSUER), "TOKEN_KEY_UNKNOWN")
    assert jwks_server.hits - hits <= 1  # a flood of bad kids costs at most one refetch


async def test_rotated_key_is_picked_up_on_unknown_kid(jwks_server: Any, make_token: Any, signing_key: Any) -> None:
    from edgefn.tokens import _new_private_jwk, mint, public_jwks

    v = verifier(jwks_server.url, jwks_refresh_cooldown_seconds=0)
    await v.verify(make_token())
    new_key = _new_private_jwk()
    old = jwks_server.jwks
    jwks_server.jwks = {"keys": old["keys"] + public_jwks(new_key)["keys"]}
    try:
        p = await v.verify(mint(new_key, user_id="44444444-4444-4444-8444-444444444444", issuer=ISSUER))
        assert p is not None and p.user_id.startswith("4444")
    finally:
        jwks_server.jwks = old


async def test_rs256_from_inline_jwks() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = await asyncio.to_thread(rsa.generate_private_key, public_exponent=65537, key_size=2048)
    pub = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    pub.update({"kid": "rsa-1", "alg": "RS256", "use": "sig"})
    v = TokenVerifier(CoreSettings.load(env={}, jwt_issuer=ISSUER, supabase_jwks=json.dumps({"keys": [pub]})))
    now = int(time.time())
    claims = {"sub": "55555555-5555-4555-8555-555555555555", "role": "authenticated", "aud": "authenticated",
              "iss": ISSUER, "iat": now, "exp": now + 60}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "rsa-1"})
    p = await v.verify(token)
    assert p is not None and p.user_id.startswith("5555")


def test_principal_cache_is_bounded_and_expires() -> None:
    now = [1000.0]
    cache = PrincipalCache(max_entries=3, clock=lambda: now[0])
    for i in range(5):
        cache.put(f"k{i}", Principal(user_id=str(i), role="authenticated", expires_at=1010))
    assert len(cache) == 3 and cache.get("k0") is None and cache.get("k4") is not None
    now[0] = 1011
    assert cache.get("k4") is None


def test_bearer_token_prefers_the_header_that_survives_a_cdn() -> None:
    assert bearer_token({"authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"authorization": "AWS4-HMAC-SHA256 Credential=x", "x-supabase-authorization": "Bearer t"}) == "t"
    assert bearer_token({"authorization": "Basic zzz"}) is None
    assert bearer_token({}) is None


async def test_jwks_outage_is_a_503_once_not_a_queue_of_fetches(make_token: Any, closed_port_url: str) -> None:
    import asyncio

    v = verifier(closed_port_url)
    tokens = [make_token() for _ in range(20)]
    started = time.perf_counter()
    results = await asyncio.gather(*(v.verify(t) for t in tokens), return_exceptions=True)
    assert time.perf_counter() - started < 2.5
    assert all(isinstance(r, errors.ServiceUnavailable) and r.code == "AUTH_KEYS_UNAVAILABLE" for r in results)
    assert v.jwks.fetch_count == 1


@pytest.fixture
def closed_port_url() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json"
