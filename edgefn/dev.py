"""`edgefn dev [--port 8000] [--data-dir .edgefn]`: every function on one local server.

    http://127.0.0.1:8000/functions/v1/<name>/...      each function in `functions.FUNCTIONS`
    http://127.0.0.1:8000/auth/v1/.well-known/jwks.json the local signing key's public half
    http://127.0.0.1:8000/docs                          the API docs (Swagger UI), /openapi.json

Services come from the environment when configured (`DATABASE_URL`, `REDIS_URL` or
`UPSTASH_REDIS_REST_URL`, `R2_ENDPOINT_URL`/`R2_ACCOUNT_ID` with `R2_BUCKET` and keys);
each one that is not configured is started embedded in the data folder (see
`edgefn.embedded`). Then migrations are applied, demo data is loaded, and a demo token and
example calls are printed. Ctrl-C (or SIGTERM) stops the server, then every service it
started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefn.cli import CommandError

if TYPE_CHECKING:
    from edgefn.apidocs import APIDocs
    from shared.app import FunctionApp

DEFAULT_PORT = 8000
DEFAULT_DATA_DIR = ".edgefn"
DEFAULT_CORS_ORIGINS = "http://localhost:3000,http://127.0.0.1:3000"
DEFAULT_BUCKET = "media"
KEY_PREFIX = "edgefn"
JWKS_PATH = "/auth/v1/.well-known/jwks.json"
DEMO_USER_ID = "00000000-0000-4000-8000-000000000001"
DEMO_TIER = "paid"
DEMO_TOKEN_SECONDS = 24 * 3600

#: Example calls printed at start, each working exactly as printed (copy-paste into a shell
#: after the printed `TOKEN=...` and `SERVICE_TOKEN=...` lines). `{base}` is the server's base
#: URL; authenticated examples can use `-H "Authorization: Bearer $TOKEN"`, internal ones
#: (deep health, the orchestrator's drain) `$SERVICE_TOKEN`.
EXAMPLES: list[str] = [
    "curl -s -H \"Authorization: Bearer $TOKEN\" '{base}/functions/v1/optimized-dashboard?range=month'",
    "curl -s -H \"Authorization: Bearer $SERVICE_TOKEN\" '{base}/functions/v1/webhooks/health?deep=1'",
    "curl -s {base}" + JWKS_PATH,
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")
    p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help=f"folder for the embedded services' data, logs and the local signing key (default {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--seed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="load the demo data (default: only into the embedded database, never into a configured DATABASE_URL)",
    )


# -- the local gateway -------------------------------------------------------------------------


class LocalGateway:
    """One ASGI app in front of every function: `/functions/v1/<name>...` goes, scope
    unchanged, to that function's app; the JWKS is served at `JWKS_PATH`, the API docs at
    `/docs` when given; anything else is a 404 envelope like the functions'."""

    def __init__(self, apps: dict[str, Any], jwks: dict[str, Any], docs: APIDocs | None = None) -> None:
        self.apps = apps
        self.jwks = jwks
        self.docs = docs

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: nothing here speaks them
            await send({"type": "websocket.close", "code": 1000})
            return
        from shared.app import PREFIX

        path: str = scope["path"]
        if path.startswith(PREFIX):
            app = self.apps.get(path[len(PREFIX) :].split("/", 1)[0])
            if app is not None:
                await app(scope, receive, send)
                return
        await self._local(scope, receive, send, path)

    async def _local(self, scope: dict[str, Any], receive: Any, send: Any, path: str) -> None:
        from shared import errors
        from shared.envelope import JSONResponse, error_response
        from shared.observability import new_request_id

        request_id = new_request_id()
        response: Any
        read = scope["method"] in ("GET", "HEAD")
        if self.docs is not None and self.docs.handles(path) and read:
            await self.docs(scope, receive, send)
            return
        if path == JWKS_PATH and read:
            response = JSONResponse(
                self.jwks, headers={"cache-control": "public, max-age=600", "access-control-allow-origin": "*"}
            )
        elif path == JWKS_PATH or (self.docs is not None and self.docs.handles(path)):
            response = error_response(errors.MethodNotAllowed(headers={"Allow": "GET, HEAD"}), request_id)
        else:
            exc = errors.NotFound(f"no route for {scope['method']} {path}", code="ROUTE_NOT_FOUND")
            response = error_response(exc, request_id)
        response.headers["x-request-id"] = request_id
        await response(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        from shared.app import lifespan

        await lifespan(receive, send, self.apps.values())


# -- checks on configured services ---------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n", 1)[0].split()) or type(exc).__name__
    return text.removeprefix("connection failed: ")


def _bind(port: int) -> socket.socket:
    """Bind the server's socket now, before any service starts: a busy port fails fast, and
    nothing can take the port while the services start. uvicorn listens on it later."""
    if not 0 <= port < 65536:
        raise CommandError(f"--port {port} is not a valid port")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        reason = "is in use" if exc.errno == 98 else f"cannot be bound ({exc.strerror})"
        raise CommandError(f"port {port} on 127.0.0.1 {reason}: stop what uses it or pick another with --port") from None
    sock.set_inheritable(False)
    return sock


def _describe_dsn(url: str) -> str:
    """host:port/dbname of a DSN, never its password."""
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(url)
    return f"{p.get('host') or 'localhost'}:{p.get('port') or 5432}/{p.get('dbname') or p.get('user') or ''}"


def _check_database(url: str) -> str:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise CommandError(f"DATABASE_URL is not a valid Postgres connection string: {_first_line(exc)}") from None
    where = _describe_dsn(url)
    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        raise CommandError(f"cannot connect to the database in DATABASE_URL ({where}): {_first_line(exc)}") from None
    return where


def _check_redis(url: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    except ValueError as exc:
        raise CommandError(f"REDIS_URL is not a valid Redis URL: {_first_line(exc)}") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise CommandError(f"cannot reach Redis at REDIS_URL: {_first_line(exc)}") from None
    finally:
        client.close()


# -- migrations and demo data ---------------------------------------------------------------


def _optional(module: str, attr: str, what: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
    except AttributeError:
        pass
    print(f"edgefn dev: {module}.{attr} is not available in this build: {what} skipped", file=sys.stderr)
    return None


def _prepare_database(dsn: str, seed: bool) -> list[str]:
    apply_migrations = _optional("edgefn.migrate", "apply_migrations", "migrations")
    applied: list[str] = []
    if apply_migrations is not None:
        try:
            applied = list(apply_migrations(dsn) or [])
        except CommandError:
            raise
        except Exception as exc:
            raise CommandError(f"migrations failed: {_first_line(exc)}") from None
    seed_demo = _optional("edgefn.seed", "seed_demo", "demo data") if seed else None
    if seed_demo is not None:
        try:
            seed_demo(dsn)
        except CommandError:
            raise
        except Exception as exc:
            raise CommandError(f"loading demo data failed: {_first_line(exc)}") from None
    sync_demo = _optional("edgefn.plans", "sync_demo", "demo plans") if seed else None
    if sync_demo is not None:
        try:
            sync_demo(dsn)
        except CommandError:
            raise
        except Exception as exc:
            raise CommandError(f"registering the demo plans failed: {_first_line(exc)}") from None
    return applied


# -- webhook secrets -------------------------------------------------------------------------

#: the webhook settings `edgefn dev` fills in (when the environment does not), as printed
WEBHOOK_SECRETS = ("PAYSTACK_SECRET_KEY", "REVENUECAT_WEBHOOK_AUTH")
SECRETS_FILE = "webhook-secrets.json"


def webhook_secrets(data_dir: Path, env: Any) -> dict[str, str]:
    """Local secrets for both providers: the environment's when set, else made once per data
    folder (kept in it, mode 0600), so a signed test delivery keeps working across restarts.
    A Paystack test key (`sk_test_...`) signs deliveries; RevenueCat's Authorization value is
    a Bearer string, as one would set in its dashboard."""
    import secrets

    path = data_dir / SECRETS_FILE
    try:
        stored: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    made = {
        "PAYSTACK_SECRET_KEY": stored.get("PAYSTACK_SECRET_KEY") or "sk_test_" + secrets.token_hex(20),
        "REVENUECAT_WEBHOOK_AUTH": stored.get("REVENUECAT_WEBHOOK_AUTH") or "Bearer rc_dev_" + secrets.token_hex(16),
    }
    if made != stored:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(made, f)
        os.replace(tmp, path)
    return {k: env.get(k) or made[k] for k in WEBHOOK_SECRETS}


# -- run -----------------------------------------------------------------------------------


class _Stop(BaseException):
    """SIGINT/SIGTERM while starting: unwind, stopping what already started."""


class _Signals:
    """Our handlers for SIGINT and SIGTERM for the whole command. While starting they
    interrupt (raise `_Stop`); while serving uvicorn installs its own and restores ours
    afterwards, re-raising what it caught; while stopping they are ignored so cleanup
    finishes."""

    def __init__(self) -> None:
        self.phase = "starting"
        self.received: int | None = None
        self.server: Any = None
        self._saved: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        if self.phase == "starting":
            raise _Stop()
        if self.phase == "serving" and self.server is not None:
            self.server.should_exit = True  # before uvicorn took over the signals

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    with _Signals() as signals:
        try:
            return _run(args, signals)
        except _Stop:
            return 0


def _run(args: argparse.Namespace, signals: _Signals) -> int:
    t0 = time.monotonic()
    env = os.environ
    data_dir = Path(args.data_dir)
    sock = _bind(args.port)
    stack = contextlib.ExitStack()
    stack.callback(sock.close)
    try:
        port = sock.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        lines: list[str] = []

        # 1. configured services: check them before starting anything
        database_url = env.get("DATABASE_URL") or None
        database_embedded = database_url is None
        redis_url = env.get("REDIS_URL") or None
        upstash = env.get("UPSTASH_REDIS_REST_URL") or None
        r2_configured = bool(env.get("R2_ENDPOINT_URL") or env.get("R2_ACCOUNT_ID"))
        if database_url:
            lines.append(f"postgres  DATABASE_URL ({_check_database(database_url)})")
        if r2_configured:
            _check_storage_settings()
        if redis_url:
            _check_redis(redis_url)
            lines.append("redis     REDIS_URL")
        elif upstash:
            lines.append("redis     UPSTASH_REDIS_REST_URL")

        # 2. embedded services for the rest, in the data folder
        from edgefn.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedRedis, EmbeddedS3

        explicit: dict[str, Any] = {}
        try:
            if not database_url:
                pg = EmbeddedPostgres(data_dir)
                stack.callback(pg.stop)
                database_url = pg.start()
                lines.append(f"postgres  embedded, {pg.pgdata} ({database_url})")
            if not redis_url and not upstash:
                rd = EmbeddedRedis(data_dir)
                stack.callback(rd.stop)
                redis_url = rd.start()
                lines.append(f"redis     embedded ({redis_url}), no persistence")
            if not r2_configured:
                s3 = EmbeddedS3()
                stack.callback(s3.stop)
                bucket = env.get("R2_BUCKET") or DEFAULT_BUCKET
                endpoint = s3.start()
                s3.create_bucket(bucket)
                explicit.update(
                    r2_endpoint_url=endpoint,
                    r2_bucket=bucket,
                    r2_access_key_id=s3.access_key_id,
                    r2_secret_access_key=s3.secret_access_key,
                    # moto serves objects without a signature, like a public bucket's domain
                    r2_public_url=f"{endpoint}/{bucket}",
                )
                lines.append(f"storage   embedded S3 (moto) at {endpoint}, bucket {bucket}; in memory: uploads vanish on restart")
            else:
                lines.append(f"storage   R2 ({env.get('R2_ENDPOINT_URL') or 'account ' + env.get('R2_ACCOUNT_ID', '')})")
        except EmbeddedError as exc:
            raise CommandError(str(exc)) from None
        if (data_dir / "logs").is_dir() and any("embedded" in line for line in lines[:2]):
            lines.append(f"logs      {data_dir / 'logs'}")

        # 3. schema and demo data
        # a configured database is someone's: demo data goes in only when asked (--seed)
        applied = _prepare_database(database_url, seed=args.seed if args.seed is not None else database_embedded)

        # 4. configure every function
        from edgefn.tokens import LOCAL_ISSUER, load_or_create_key, mint, public_jwks

        jwk = load_or_create_key(data_dir)
        jwks = public_jwks(jwk)
        explicit.update(
            database_url=database_url,
            jwt_issuer=LOCAL_ISSUER,
            supabase_jwks=json.dumps(jwks),
            key_prefix=KEY_PREFIX,
        )
        if redis_url:
            explicit["redis_url"] = redis_url
        if not env.get("CORS_ORIGINS"):
            explicit["cors_origins"] = DEFAULT_CORS_ORIGINS
        hooks = webhook_secrets(data_dir, env)
        explicit.update({k.lower(): v for k, v in hooks.items()})
        apps = _configure_functions(explicit)
        from edgefn.apidocs import APIDocs

        gateway = LocalGateway(apps, jwks, docs=APIDocs(base))
        token = mint(jwk, user_id=DEMO_USER_ID, tier=DEMO_TIER, expires_in=DEMO_TOKEN_SECONDS)
        service_token = mint(jwk, user_id="service_role", role="service_role", tier=None, expires_in=DEMO_TOKEN_SECONDS)

        # 5. serve (and say where, for `edgefn seed --data-dir` and the other tools)
        from edgefn import devstate

        banner = _banner(base, apps, lines, applied, token, service_token, time.monotonic() - t0, hooks, data_dir)
        devstate.write(data_dir, url=base, database_url=database_url, webhooks=hooks)
        stack.callback(devstate.remove, data_dir)
        _serve(gateway, sock, port, banner, signals)
        return 0
    finally:
        signals.phase = "stopping"
        stack.close()


def _check_storage_settings() -> None:
    """A configured R2 needs its public URL (upload-media's settings say why): refused before
    anything starts, in one line."""
    from functions.upload_media.settings import UploadMediaSettings
    from shared.settings import ConfigError

    try:
        UploadMediaSettings.load()
    except ConfigError as exc:
        raise CommandError(f"upload-media: {exc}") from None


def _configure_functions(explicit: dict[str, Any]) -> dict[str, FunctionApp]:
    from functions import FUNCTIONS
    from shared.services import Services
    from shared.settings import ConfigError

    apps: dict[str, FunctionApp] = {}
    for name, module in FUNCTIONS.items():
        fn = importlib.import_module(module).app
        try:
            settings = fn.settings_cls.load(**explicit)
        except ConfigError as exc:
            raise CommandError(f"{name}: {exc}") from None
        svc = Services(settings)
        fn.configure(settings=settings, services=svc)
        apps[name] = fn
    return apps


def _banner(
    base: str, apps: dict[str, Any], lines: list[str], applied: list[str], token: str, service_token: str, took: float,
    hooks: dict[str, str] | None = None, data_dir: Path | None = None,
) -> str:
    from edgefn.apidocs import DOCS_PATH

    out = [
        f"edgefn dev: {len(apps)} functions at {base}/functions/v1/<name> (ready in {took:.1f} s)",
        "  " + ", ".join(apps),
        *("  " + line for line in lines),
        f"  jwks      {base}{JWKS_PATH}",
        f"  docs      {base}{DOCS_PATH} (Authorize with the TOKEN below)",
    ]
    if applied:
        out.append(f"  migrations applied: {', '.join(applied)}")
    out += [
        "",
        f"demo user {DEMO_USER_ID} (tier {DEMO_TIER}); access token, valid 24 h:",
        f"TOKEN={token}",
        "a service_role token, valid 24 h, for internal routes (deep health, the orchestrator's drain):",
        f"SERVICE_TOKEN={service_token}",
    ]
    if hooks:
        out += [
            "webhook secrets (the webhooks function checks deliveries with these; "
            "`edgefn webhooks trigger` signs with them):",
            *(f"{k}={shlex.quote(v)}" for k, v in hooks.items()),
        ]
    out += [
        "",
        "try:",
        *(example.format(base=base) for example in EXAMPLES),
    ]
    if hooks and data_dir is not None:
        dd = "" if str(data_dir) == DEFAULT_DATA_DIR else f" --data-dir {shlex.quote(str(data_dir))}"
        out += [f"edgefn webhooks trigger paystack charge.success{dd}   "
                "# a signed test delivery; every event of both providers: --help"]
    out += [
        "",
        "Ctrl-C stops the server and the services it started.",
    ]
    return "\n".join(out)


def _serve(gateway: LocalGateway, sock: socket.socket, port: int, banner: str, signals: _Signals) -> None:
    import uvicorn

    config = uvicorn.Config(
        gateway,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.02)
        if server.started:
            print(banner, flush=True)

    async def main() -> None:
        task = asyncio.create_task(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            task.cancel()

    signals.server = server
    signals.phase = "serving"
    asyncio.run(main())
    signals.phase = "stopping"
