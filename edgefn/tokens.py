"""Local development keys and access tokens shaped like Supabase's.

The local signing key (ES256) lives in the data folder `edgefn dev` uses; the local server
serves its public half at `/auth/v1/.well-known/jwks.json` and its functions trust it.

    edgefn token --user 00000000-0000-4000-8000-000000000001 --tier paid
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Any

LOCAL_ISSUER = "http://127.0.0.1/auth/v1"
KEY_FILE = "jwt-signing-key.json"
TIERS = ("free", "paid", "admin")


def _new_private_jwk() -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1())
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key))
    jwk.update({"kid": "local-" + secrets.token_hex(6), "alg": "ES256", "use": "sig"})
    return jwk


def load_or_create_key(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The private JWK in `data_dir`, created (mode 0600) on first use."""
    path = Path(data_dir) / KEY_FILE
    if path.exists():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    path.parent.mkdir(parents=True, exist_ok=True)
    jwk = _new_private_jwk()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(jwk, f)
    os.replace(tmp, path)
    return jwk


def public_jwks(private_jwk: dict[str, Any]) -> dict[str, Any]:
    public = {k: v for k, v in private_jwk.items() if k not in ("d",)}
    return {"keys": [public]}


def mint(
    private_jwk: dict[str, Any],
    *,
    user_id: str,
    tier: str | None = "free",
    expires_in: int = 3600,
    issuer: str = LOCAL_ISSUER,
    audience: str = "authenticated",
    role: str = "authenticated",
    now: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    import jwt
    from jwt.algorithms import ECAlgorithm

    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": user_id,
        "aud": audience,
        "role": role,
        "iat": int(now),
        "exp": int(now) + expires_in,
        "session_id": str(uuid.uuid4()),
        "aal": "aal1",
        "email": f"{user_id[:8]}@example.test",
        "is_anonymous": False,
        "app_metadata": {"provider": "email", **({"tier": tier} if tier else {})},
        "user_metadata": {},
    }
    if extra:
        claims.update(extra)
    key = ECAlgorithm.from_jwk(json.dumps(private_jwk))
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": private_jwk["kid"], "typ": "JWT"})  # type: ignore[arg-type]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", required=True, help="the user id (uuid) the token is for")
    p.add_argument("--tier", choices=TIERS, default="free")
    p.add_argument("--expires", type=int, default=3600, metavar="SECONDS")
    p.add_argument("--data-dir", default=".edgefn", help="the data folder `edgefn dev` uses (default .edgefn)")


def run(args: argparse.Namespace) -> int:
    from edgefn.cli import CommandError

    configured = os.environ.get("JWT_ISSUER") or (
        os.environ["SUPABASE_URL"].rstrip("/") + "/auth/v1" if os.environ.get("SUPABASE_URL") else None
    )
    if configured and configured != LOCAL_ISSUER:
        raise CommandError(
            f"refusing to mint: the configured issuer {configured!r} is not the local one ({LOCAL_ISSUER}); "
            "real projects' tokens come from Supabase Auth"
        )
    try:
        uuid.UUID(args.user)
    except ValueError:
        raise CommandError(f"--user must be a uuid, got {args.user!r}") from None
    if args.expires <= 0:
        raise CommandError("--expires must be positive")
    jwk = load_or_create_key(args.data_dir)
    role_tier = args.tier
    sys.stdout.write(mint(jwk, user_id=args.user, tier=role_tier, expires_in=args.expires) + "\n")
    return 0
