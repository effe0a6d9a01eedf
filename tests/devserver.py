"""`edgefn dev` as a user runs it, for the tests that need the real server: a subprocess
with the service settings stripped from its environment (or given explicitly), its banner
read line by line, stopped with Ctrl-C (SIGINT) as a user stops it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READY_LINE = "Ctrl-C stops"
START_TIMEOUT_S = 45


def edgefn_cmd(*args: str) -> list[str]:
    """`edgefn ...` as a user runs it: the console script next to this interpreter when
    installed, else the same entry point through `-c` (not `-m edgefn.cli`: run as
    `__main__`, cli.py would not catch the CommandError that edgefn.dev raises)."""
    script = Path(sys.executable).parent / "edgefn"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "import sys; from edgefn.cli import main; sys.exit(main())", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus every service setting, so `edgefn dev` starts embedded ones."""
    drop = ("DATABASE_", "REDIS_", "UPSTASH_", "R2_", "SUPABASE_", "JWT_", "CORS_", "PG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["EDGEFN_ACCESS_LOG"] = "0"
    env.update(extra)
    return env


@dataclass
class DevServer:
    proc: subprocess.Popen[str]
    port: int
    data_dir: Path
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        """The demo token the banner prints (`TOKEN=...`)."""
        return next(ln for ln in self.lines if ln.startswith("TOKEN=")).removeprefix("TOKEN=")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _reader(server: DevServer) -> None:
    assert server.proc.stdout is not None
    for line in server.proc.stdout:
        server.lines.append(line.rstrip("\n"))
        if line.startswith(READY_LINE):
            server.ready.set()
    server.ready.set()  # EOF: the process ended


@contextlib.contextmanager
def start_dev(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[DevServer]:
    """`edgefn dev --port <free> --data-dir <tmp>/data [args]`, yielded once its banner is
    printed (a test failure with its output if it is not), stopped with SIGINT after."""
    port = free_port()
    stderr_path = tmp / "stderr.log"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            edgefn_cmd("dev", "--port", str(port), "--data-dir", str(tmp / "data"), *args),
            cwd=REPO, env=clean_env() if env is None else env, stdout=subprocess.PIPE, stderr=err, text=True,
        )
    server = DevServer(proc, port, tmp / "data", stderr_path)
    threading.Thread(target=_reader, args=(server,), daemon=True).start()
    try:
        if not server.ready.wait(START_TIMEOUT_S) or proc.poll() is not None:
            pytest.fail(f"edgefn dev did not start:\n{server.stderr()[-3000:]}\n" + "\n".join(server.lines))
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
