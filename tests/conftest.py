"""Real services for the test run.

- Postgres: `DATABASE_URL` when set (an admin DSN; each run creates and drops its own
  database), else an embedded server in a temporary folder.
- Redis: `REDIS_URL` when set, else an embedded server; each run uses its own key prefix
  and deletes its keys afterwards.
- S3 (the R2 stand-in): moto's server on a free port.
- Auth: an ES256 key served as a JWKS over real HTTP, plus an HS256 secret; `make_token`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefn.jwks_server import JWKSServer

os.environ.setdefault("EDGEFN_ACCESS_LOG", "0")

RUN_ID = uuid.uuid4().hex[:10]
KEY_PREFIX = f"test:{RUN_ID}"
HS_SECRET = "test-hs256-secret-that-is-long-enough-for-sha256"
ISSUER = "http://127.0.0.1/auth/v1"
EVENTS = Path(__file__).parent / "events"


# -- Postgres ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from edgefn.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pgdata"))
    try:
        yield pg.start()
    finally:
        pg.stop()


def _through_pgbouncer(config: pytest.Config) -> bool:
    """`pytest -m pgbouncer`: the database tests reach Postgres through PgBouncer in
    transaction mode, as the functions reach Supabase through Supavisor (edgefn/pgbouncer.py)."""
    import re

    return bool(re.search(r"(?<!not )\bpgbouncer\b", config.getoption("markexpr") or ""))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the database is a `pgbouncer` test too (before `-m` selects),
    except those about the server processes behind their own connections (`direct_postgres`)."""
    for item in items:
        if "database_url" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("direct_postgres"):
            item.add_marker(pytest.mark.pgbouncer)


@pytest.fixture(scope="session")
def database_url(pg_admin_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for this run, migrated, dropped at the end; reached through
    PgBouncer in transaction mode under `-m pgbouncer`."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from edgefn.migrate import apply_migrations

    name = f"edgefn_test_{RUN_ID}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    params = conninfo_to_dict(pg_admin_dsn)
    params["dbname"] = name
    dsn = make_conninfo(**params)
    bouncer = None
    try:
        apply_migrations(dsn)  # directly: migrations take advisory locks
        if _through_pgbouncer(request.config):
            from edgefn.pgbouncer import PgBouncer

            bouncer = PgBouncer(dsn)
            dsn = bouncer.start()
            # the tests' own helper connections prepare no statements either: psycopg's
            # default prepares after 5 runs of a query, which a transaction pooler cannot keep
            # (the functions' pool already runs with prepare_threshold=None)
            for cls in (psycopg.Connection, psycopg.AsyncConnection):
                cls.connect.__func__.__kwdefaults__["prepare_threshold"] = None  # type: ignore[attr-defined]
        yield dsn
    finally:
        if bouncer is not None:
            bouncer.stop()
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


# -- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
    else:
        from edgefn.embedded import EmbeddedRedis

        rd = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
        try:
            yield rd.start()
        finally:
            rd.stop()
            return
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=1000):
        client.delete(key)
    client.close()


# -- S3 (moto) -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bridge(redis_url: str) -> Iterator[Any]:
    """The Upstash REST protocol in front of the run's Redis (`edgefn.upstash_bridge`)."""
    import secrets

    from edgefn.upstash_bridge import BridgeServer

    server = BridgeServer(redis_url, token=secrets.token_urlsafe(24))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# -- auth ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def signing_key() -> dict[str, Any]:
    from edgefn.tokens import _new_private_jwk

    return _new_private_jwk()


@pytest.fixture(scope="session")
def jwks_server(signing_key: dict[str, Any]) -> Iterator[JWKSServer]:
    from edgefn.tokens import public_jwks

    srv = JWKSServer(public_jwks(signing_key))
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def make_token(signing_key: dict[str, Any]) -> Callable[..., str]:
    """make_token(user_id, tier="free", expires_in=3600, alg="ES256", **claims)"""
    from edgefn.tokens import mint

    def _make(user_id: str | None = None, *, alg: str = "ES256", **kw: Any) -> str:
        user_id = user_id or str(uuid.uuid4())
        kw.setdefault("issuer", ISSUER)
        if alg == "HS256":
            import time

            import jwt

            now = int(time.time())
            claims = {
                "iss": kw.get("issuer"),
                "sub": user_id,
                "aud": kw.get("audience", "authenticated"),
                "role": kw.get("role", "authenticated"),
                "iat": now,
                "exp": now + int(kw.get("expires_in", 3600)),
                "app_metadata": {"tier": kw.get("tier", "free")},
            }
            return jwt.encode(claims, kw.get("secret", HS_SECRET), algorithm="HS256")
        return mint(signing_key, user_id=user_id, **kw)

    _make()  # the first signature imports cryptography's OpenSSL backend: here, not in a test's loop callback
    return _make


# -- settings and clients ------------------------------------------------------------------


@pytest.fixture(scope="session")
def base_env(database_url: str, redis_url: str, jwks_server: JWKSServer, s3_endpoint: str) -> dict[str, Any]:
    """Settings values every function accepts, pointing at this run's services."""
    return {
        "database_url": database_url,
        "redis_url": redis_url,
        "key_prefix": KEY_PREFIX,
        "jwt_issuer": ISSUER,
        "supabase_jwks_url": jwks_server.url,
        "supabase_jwt_secret": HS_SECRET,
        "redis_timeout_ms": 500,
        "r2_endpoint_url": s3_endpoint,
        "r2_bucket": f"media-{RUN_ID}",
        "r2_access_key_id": "testing",
        "r2_secret_access_key": "testing",
        # moto serves objects without a signature, as a public bucket's r2.dev URL does
        "r2_public_url": f"{s3_endpoint}/media-{RUN_ID}",
        "edgefn_access_log": False,
    }


@pytest.fixture
async def client_for(base_env: dict[str, Any]) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """client_for(fn_app, **settings) -> an httpx.AsyncClient driving the app in process
    with fresh services (closed when the test ends)."""
    from shared.services import Services

    opened: list[tuple[Services, httpx.AsyncClient]] = []

    def _client(fn: Any, services: Services | None = None, **overrides: Any) -> httpx.AsyncClient:
        settings = fn.settings_cls.load(env={}, **{**base_env, **overrides})
        services = services or Services(settings)
        fn.configure(settings=settings, services=services)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=fn), base_url="http://testserver")
        opened.append((services, client))
        return client

    yield _client
    for services, client in opened:
        await client.aclose()
        await services.aclose()


# -- the clock on awkward dates -------------------------------------------------------------

#: instants where calendars bite. `today` is the real clock; the rest travel there (and tick
#: on from there). The database's now() does not move: code under test takes its time from
#: the function's clock (`Services.clock`), never from the database, so these dates reach it.
EDGE_INSTANTS: dict[str, str | None] = {
    "today": None,
    "sixth-of-a-31-day-month": "2026-12-06T12:00:00+00:00",
    "month-end": "2027-01-31T23:58:00+00:00",  # minutes of margin: the clock ticks
    "year-end": "2026-12-31T23:58:00+00:00",
    "month-start": "2027-03-01T00:00:30+00:00",
    "february-28": "2027-02-28T23:58:00+00:00",
    "leap-day": "2028-02-29T12:00:00+00:00",
    "us-dst-starts": "2027-03-14T07:30:00+00:00",  # 03:30 EDT, an hour after the jump
    "eu-dst-ends": "2026-10-25T01:30:00+00:00",  # 02:30 CET, after the repeated hour
}


@pytest.fixture(params=list(EDGE_INSTANTS))
def on_edge_dates(request: pytest.FixtureRequest) -> Iterator[datetime]:
    """Runs the test once per instant of EDGE_INSTANTS, the process clock set there (ticking);
    yields that instant."""
    import time_machine

    when = EDGE_INSTANTS[request.param]
    if when is None:
        yield datetime.now(UTC)
        return
    with time_machine.travel(datetime.fromisoformat(when), tick=True):
        yield datetime.now(UTC)


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())  # type: ignore[no-any-return]


# -- nothing blocks the event loop ----------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _loop_watch() -> Iterator[Any]:
    """Every callback the event loop runs is timed for the whole run (tests/loopwatch.py)."""
    from shared import tls
    from shared.services import Services
    from shared.settings import CoreSettings
    from tests import loopwatch

    # what a server's start-up does before its first request: import its code (here, every
    # function's and the middleware's, as the first test of each would otherwise do on the
    # loop) and build the slow clients (FunctionApp.start)
    import importlib
    import pkgutil

    import functions
    import shared
    import tests
    from shared import warmup

    for package in (shared, functions):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
    for package in ("shared", "functions"):
        warmup.import_everything(package)
    # the helper modules tests import inside their bodies (the test files pytest imported)
    for module in pkgutil.walk_packages(tests.__path__, "tests."):
        leaf = module.name.rsplit(".", 1)[-1]
        if not (leaf.startswith("test_") or leaf == "conftest" or module.name.startswith("tests.browser")):
            importlib.import_module(module.name)
    Services(CoreSettings())._build_slow_clients(("database", "redis", "storage"))
    tls.warm()
    _hypothesis_constants()
    with loopwatch.watching() as watch:
        yield watch


def _hypothesis_constants() -> None:
    """Hypothesis draws some values from the constants in the project's own modules, which it
    collects on a test's first draw after new modules were imported: it parses each one (and
    writes an on-disk cache), 100 ms or more of CPU when the cache is cold, as in a fresh
    clone. Done here, after the imports above, it never lands in an async test's loop
    callback. (An internal of Hypothesis: when it moves, this does nothing.)"""
    try:
        from hypothesis.internal.conjecture.providers import _get_local_constants
    except ImportError:
        return
    _get_local_constants()


@pytest.fixture(autouse=True)
def _nothing_blocks_the_loop(request: pytest.FixtureRequest, _loop_watch: Any) -> Iterator[None]:
    """Fails a test during which any callback held the loop for SLOW_S or more (time spent
    waiting for a CPU not counted). `@pytest.mark.blocks_loop(reason)` exempts a test that
    blocks on purpose."""
    # modules imported since Hypothesis last looked (by earlier tests) are scanned for
    # constants on the next draw, which may be inside a loop callback: scan them here
    _hypothesis_constants()
    before = len(_loop_watch.hits)
    yield
    hits = _loop_watch.hits[before:]
    if hits and request.node.get_closest_marker("blocks_loop") is None:
        pytest.fail("the event loop was blocked:\n" + "\n".join(hits[:5]), pytrace=False)
