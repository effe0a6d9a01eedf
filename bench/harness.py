"""What every benchmark needs: real Postgres and Redis (from DATABASE_URL / REDIS_URL, else
embedded ones in a temporary folder), a scratch database with the migrations applied,
server processes started with an environment, and the machine's description."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Services:
    admin_dsn: str
    redis_url: str


@contextlib.contextmanager
def services() -> Iterator[Services]:
    stack = contextlib.ExitStack()
    with stack:
        tmp = Path(tempfile.mkdtemp(prefix="edgefn-bench-"))
        stack.callback(shutil.rmtree, tmp, True)
        dsn = os.environ.get("DATABASE_URL")
        if not dsn:
            from edgefn.embedded import EmbeddedPostgres

            pg = EmbeddedPostgres(tmp / "pg")
            dsn = pg.start()
            stack.callback(pg.stop)
        url = os.environ.get("REDIS_URL")
        if not url:
            from edgefn.embedded import EmbeddedRedis

            rd = EmbeddedRedis(tmp / "redis")
            url = rd.start()
            stack.callback(rd.stop)
        yield Services(dsn, url)


@contextlib.contextmanager
def scratch_database(admin_dsn: str, name: str | None = None, keep: bool = False) -> Iterator[str]:
    """A database with the migrations applied; dropped afterwards unless `keep`."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from edgefn.migrate import apply_migrations

    name = name or f"edgefn_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'create database "{name}"')
    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = name
    dsn = make_conninfo(**params)
    try:
        apply_migrations(dsn)
        yield dsn
    finally:
        if not keep:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')


def round_trips(apps: Any) -> dict[str, int]:
    """Postgres and Redis round trips of these function apps' services in this process (a
    bench server's /stats); only services already built are read, none is opened."""
    out = {"db": 0, "kv": 0}
    for fn in apps:
        svc = fn._services
        if svc is None:
            continue
        if svc._db is not None:
            out["db"] += svc._db.round_trips
        if svc._kv is not None:
            out["kv"] += svc._kv.round_trips
    return out


def kept_database(admin_dsn: str, name: str, log: Any = print) -> str:
    """A database kept between benchmark runs (seeded data is costly), migrated; rebuilt
    empty when a migration changed since it was kept."""
    import psycopg

    from edgefn.migrate import MigrationError

    try:
        with scratch_database(admin_dsn, name, keep=True) as dsn:
            return dsn
    except MigrationError as exc:
        log(f"rebuilding {name}: {exc}")
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
    with scratch_database(admin_dsn, name, keep=True) as dsn:
        return dsn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(app: str, env: dict[str, str], *, workers: int = 1, ready_path: str = "/", port: int | None = None) -> Iterator[int]:
    """uvicorn serving `app` ("module:attr") in its own process(es); yields the port."""
    with server_process(app, env, workers=workers, ready_path=ready_path, port=port) as (p, _pid):
        yield p


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    family, todo = set(), [pid]
    while todo:
        p = todo.pop()
        family.add(p)
        todo.extend(c for c, parent in parents.items() if parent == p and c not in family)
    return sum(times.get(p, 0.0) for p in family)


@contextlib.contextmanager
def server_process(
    app: str, env: dict[str, str], *, workers: int = 1, ready_path: str = "/", port: int | None = None,
    log_to: Path | None = None,
) -> Iterator[tuple[int, int]]:
    """Like `server`, yielding (port, pid of the uvicorn process). `log_to`: keep the
    servers' output (the functions' JSON log lines) in that file instead of discarding it."""
    port = port or free_port()
    # the functions' own JSON access log stays on (it is part of the stack being measured);
    # it goes to a file, as a platform's log collector would take it
    full_env = {"PATH": os.environ.get("PATH", ""), "EDGEFN_ACCESS_LOG": "1", "PYTHONPATH": str(ROOT), **env}
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", "--workers", str(workers)]
    if log_to is not None:
        log_to.parent.mkdir(parents=True, exist_ok=True)
        log: Any = open(log_to, "ab")  # noqa: SIM115 - closed in the finally below
    else:
        log = tempfile.NamedTemporaryFile(prefix="edgefn-bench-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, env=full_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    raise RuntimeError("server died: " + Path(log.name).read_text()[-2000:]) from None
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if log_to is None:
            os.unlink(log.name)


def machine() -> str:
    cpu = "unknown cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}"
