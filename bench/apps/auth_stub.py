"""A stand-in for Supabase Auth's `GET /auth/v1/user`, which the naive baseline calls on
every request: it verifies the bearer token against the JWKS in `SUPABASE_JWKS` and answers
the user. (The real endpoint also reads the user row, so this is the cheaper case.)"""

from __future__ import annotations

import json
import os

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_keys = {k["kid"]: jwt.PyJWK(k) for k in json.loads(os.environ["SUPABASE_JWKS"])["keys"]}


async def user(request: Request) -> JSONResponse:
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    try:
        kid = jwt.get_unverified_header(token).get("kid", "")
        claims = jwt.decode(token, _keys[kid], algorithms=["ES256", "RS256"], audience="authenticated")
    except (jwt.PyJWTError, KeyError):
        return JSONResponse({"msg": "invalid JWT"}, status_code=401)
    return JSONResponse({"id": claims["sub"], "role": claims.get("role"), "aud": claims.get("aud")})


app = Starlette(routes=[Route("/auth/v1/user", user)])
