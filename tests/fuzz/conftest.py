"""The fuzzer's target and its tally.

- `fuzz_target`: the whole fleet (`bench.apps.fleet_app`: every function) in uvicorn worker
  processes over real HTTP, on this run's Postgres and Redis, with moto's S3 and the push /
  Realtime stand-in, plus a few seeded users (profiles, media, purchases, inbox events) and
  the tokens the fuzzer presents: valid ones for those users, and every kind of bad one.
- `fuzz_client`: one httpx client with the per-request timeout (no answer in time: a hang).
- `fuzz_run`: cases, statuses and failures of the whole run; written as JSON to the file
  `EDGEFN_FUZZ_REPORT` names, if set, when the session ends.

`EDGEFN_FUZZ_WORKERS` (default 2) sets the uvicorn worker processes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from bench import fleet
from edgefn.tokens import _new_private_jwk, mint
from tests import factories as f
from tests.conftest import KEY_PREFIX

TIMEOUT = 10.0
WORKERS = int(os.environ.get("EDGEFN_FUZZ_WORKERS", "2"))


@dataclass(frozen=True)
class Target:
    base_url: str
    fleet: fleet.Fleet
    #: seeded users: the first owns most media; every one has a profile
    users: tuple[str, ...]
    #: media ids of the seeded users (some get deleted along the way)
    media: tuple[str, ...]
    #: label -> token (valid ones start with "valid")
    tokens: dict[str, str]


async def _seed(dsn: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    owner = await f.create_user(dsn, gender="man", interested_in=["woman"])
    others = [
        await f.create_user(dsn, tier="paid"),
        await f.create_user(dsn, lat=37.57, lon=126.98),
        await f.create_user(dsn, gender="nonbinary", interested_in=["man", "woman", "nonbinary"]),
    ]
    media = [await f.add_media(dsn, owner) for _ in range(12)] + [await f.add_media(dsn, others[0]) for _ in range(3)]
    artist = await f.add_artist(dsn)
    for uid in (owner, others[0]):
        await f.add_purchase(dsn, uid, "12.30", artist_id=artist)
        await f.add_goal(dsn, uid)
        await f.add_user_event(dsn, uid, "match", {"with": others[1]})
    await f.add_swipe(dsn, others[1], owner, "like")
    return (owner, *others), tuple(media)


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def tokens(fl: fleet.Fleet, users: tuple[str, ...]) -> dict[str, str]:
    """Every kind of token a caller can present, by label."""
    owner, paid = users[0], users[1]
    now = int(time.time())
    claims = {"iss": fleet.ISSUER, "sub": owner, "aud": "authenticated", "role": "authenticated",
              "iat": now, "exp": now + 3600}  # fmt: skip
    valid = fl.token(owner)
    head, _, sig = valid.split(".")
    return {
        "valid: owner": valid,
        "valid: other user": fl.token(users[2]),
        "valid: paid user": fl.token(paid, tier="paid"),
        "valid: admin tier": fl.token(users[3], tier="admin"),
        "valid: no account": fl.token(str(uuid.uuid4())),
        "valid: service_role": fl.token("", role="service_role", tier=None),
        "valid: sub not a uuid": fl.token("not-a-uuid"),
        "valid: sub unicode": fl.token("ü" * 40),
        "valid: sub sql": fl.token("'; drop table public.profiles; --"),
        "valid: sub nil uuid": fl.token("00000000-0000-0000-0000-000000000000"),
        "valid: tier a list": fl.token(owner, tier=None, extra={"app_metadata": {"tier": ["paid"]}}),
        "valid: app_metadata a list": fl.token(owner, extra={"app_metadata": [1, 2]}),
        "valid: unknown tier": fl.token(owner, tier="platinum"),
        "valid: session_id an object": fl.token(owner, extra={"session_id": {"a": 1}}),
        "valid: huge claims": fl.token(owner, extra={"pad": "x" * 4000}),
        "anon role": fl.token(owner, role="anon"),
        "unknown role": fl.token(owner, role="supabase_admin"),
        "expired": fl.token(owner, expires_in=-3600),
        "not yet valid": fl.token(owner, extra={"nbf": now + 3600}),
        "iat in the future": fl.token(owner, extra={"iat": now + 3600}),
        "exp not a number": fl.token(owner, extra={"exp": "tomorrow"}),
        "sub a number": fl.token(owner, extra={"sub": 12345}),
        "wrong issuer": mint(fl.key, user_id=owner, issuer="https://evil.example/auth/v1"),
        "wrong audience": fl.token(owner, audience="somebody-else"),
        "unknown key": mint(_new_private_jwk(), user_id=owner, issuer=fleet.ISSUER),
        "another key, our kid": mint({**_new_private_jwk(), "kid": fl.key["kid"]}, user_id=owner, issuer=fleet.ISSUER),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "HS256 (no secret configured)": jwt.encode(claims, "s" * 32, algorithm="HS256"),
        "tampered payload": f"{head}.{_b64({**claims, 'sub': users[2]})}.{sig}",
        "truncated signature": valid[:-8],
        "not a JWT": "definitely-not-a-jwt",
        "three dots": "a.b.c",
    }


@pytest.fixture(scope="session")
def fuzz_target(database_url: str, redis_url: str) -> Iterator[Target]:
    users, media = asyncio.run(_seed(database_url))
    with fleet.providers() as prov, fleet.s3() as s3:
        fl = fleet.Fleet.configure(database_url, redis_url, s3=s3, providers=prov, KEY_PREFIX=f"{KEY_PREFIX}:fuzz")
        with fl.serve(workers=WORKERS) as base_url:
            yield Target(base_url, fl, users, media, tokens(fl, users))


@pytest.fixture(scope="session")
def fuzz_client(fuzz_target: Target) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_target.base_url, timeout=TIMEOUT) as client:
        yield client


@dataclass
class Failure:
    """One distinct failure (operation, kind, status, code), its count and the smallest
    request that showed it."""

    operation: str
    kind: str
    status: str
    code: str | None
    count: int
    size: int
    repro: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"operation": self.operation, "kind": self.kind, "status": self.status, "code": self.code,
                "count": self.count, "repro": self.repro}  # fmt: skip


@dataclass
class FuzzRun:
    started: float = field(default_factory=time.perf_counter)
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    per_operation: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    #: operations whose own logic answered at least once (past routing, parsing and auth)
    reached: Counter[str] = field(default_factory=Counter)
    failures: dict[tuple[str, str, str, str | None], Failure] = field(default_factory=dict)

    def record(self, op: str, status: str, code: str | None, reached: bool) -> None:
        self.cases[op] += 1
        self.statuses[status] += 1
        self.per_operation[op][f"{status} {code}" if code else status] += 1
        if reached:
            self.reached[op] += 1

    def fail(self, op: str, kind: str, status: str, code: str | None, size: int, repro: dict[str, Any]) -> None:
        key = (op, kind, status, code)
        seen = self.failures.get(key)
        if seen is None:
            self.failures[key] = Failure(op, kind, status, code, 1, size, repro)
            return
        seen.count += 1
        if size < seen.size:
            seen.size, seen.repro = size, repro

    def failures_of(self, op: str) -> list[Failure]:
        return [x for x in self.failures.values() if x.operation == op]

    def report(self) -> dict[str, Any]:
        return {
            "operations": len(self.cases),
            "cases": sum(self.cases.values()),
            "statuses": dict(sorted(self.statuses.items())),
            "failures": [x.as_dict() for x in self.failures.values()],
            "seconds": round(time.perf_counter() - self.started, 1),
            "per_operation": {
                op: {"cases": n, "reached": self.reached[op], "statuses": dict(sorted(self.per_operation[op].items()))}
                for op, n in sorted(self.cases.items())
            },
        }


@pytest.fixture(scope="session")
def fuzz_run(fuzz_target: Target) -> Iterator[FuzzRun]:
    run = FuzzRun()
    yield run
    out = os.environ.get("EDGEFN_FUZZ_REPORT")
    if out:
        Path(out).write_text(json.dumps(run.report(), indent=2, default=str) + "\n")
