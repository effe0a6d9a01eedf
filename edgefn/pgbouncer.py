"""PgBouncer in transaction mode in front of a database: what Supabase's Supavisor
(port 6543) does to the functions' connections, so `pytest -m pgbouncer` runs the database
tests under the same constraints (no session state survives a transaction, no prepared
statements), and `bench.cold_start --end-to-end` measures behind it. Debian's `pgbouncer`
package; it refuses to run as root, so as root it drops to the `postgres` user (its files
are made readable for that). Tooling for tests and benchmarks: never deployed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

BINARIES = ("pgbouncer", "/usr/sbin/pgbouncer")


def binary() -> str | None:
    return next((found for b in BINARIES if (found := shutil.which(b))), None)


class PgBouncer:
    def __init__(self, server_dsn: str) -> None:
        self.server = conninfo_to_dict(server_dsn)
        self.dir = Path(tempfile.mkdtemp(prefix="edgefn-pgbouncer-"))
        self.dir.chmod(0o777)  # written by the postgres user when we are root (its pid file)
        self.proc: subprocess.Popen[bytes] | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])

    def start(self) -> str:
        """Start it; the DSN that reaches the server's database through it."""
        exe = binary()
        if exe is None:
            raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        s = self.server
        user, dbname = s.get("user", "postgres"), s["dbname"]
        server = " ".join(f"{k}={s[k]}" for k in ("host", "port", "user", "password") if s.get(k))
        (self.dir / "userlist.txt").write_text(f'"{user}" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{dbname} = {server} dbname={dbname}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 1000\n"
            "default_pool_size = 40\n"
            "server_reset_query =\n"
            # psycopg sends these at connect; the pooler forwards none of them
            "ignore_startup_parameters = extra_float_digits,options,application_name\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        for f in self.dir.iterdir():
            f.chmod(0o644)
        cmd = [exe, str(ini)]
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", "postgres"]
        # its log goes to the file; stderr too, never to a pipe nobody drains (a full pipe
        # blocks it: every later client then waits for a login that never completes)
        self.stderr = (self.dir / "stderr.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.stderr)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = (self.dir / "stderr.log").read_text(errors="replace")
                    raise RuntimeError(f"pgbouncer did not start: {err}{self.log()}") from None
                time.sleep(0.05)
        return make_conninfo(host="127.0.0.1", port=self.port, user=user, dbname=dbname)

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
