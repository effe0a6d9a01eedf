"""Sentry is imported and initialised only when SENTRY_DSN is set, and then reports
unhandled errors to the DSN (a local HTTP server that records what it got); the access
log is one JSON line per request."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, json, sys
import httpx
from shared.app import FunctionApp
from shared.settings import CoreSettings

fn = FunctionApp("obs", settings=CoreSettings)

@fn.get("/boom", auth="public")
async def boom(ctx):
    raise RuntimeError("kaboom")

@fn.get("/fine", auth="public")
async def fine(ctx):
    return {"ok": True}

async def main():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fn), base_url="http://t") as c:
        statuses = [(await c.get(p)).status_code for p in ("/fine", "/boom")]
    loaded = "sentry_sdk" in sys.modules
    if loaded:
        import sentry_sdk
        sentry_sdk.flush(timeout=5)
    print(json.dumps({"statuses": statuses, "sentry_loaded": loaded}))

asyncio.run(main())
"""


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                elif self.headers.get("content-encoding") == "br":
                    body = b"(brotli)"
                outer.bodies.append(body)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.server.shutdown()


def run_child(env_extra: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    env = {"PATH": os.environ.get("PATH", ""), "EDGEFN_ACCESS_LOG": "1", **env_extra}
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    logs = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    return json.loads(out.stdout.strip().splitlines()[-1]), logs


def test_no_dsn_no_sentry_import_and_one_log_line_per_request() -> None:
    result, logs = run_child({})
    assert result == {"statuses": [200, 500], "sentry_loaded": False}
    requests = [entry for entry in logs if entry["msg"] == "request"]
    assert [(e["path"], e["status"]) for e in requests] == [("/fine", 200), ("/boom", 500)]
    assert all(len(e["request_id"]) >= 16 and e["function"] == "obs" for e in requests)
    assert any(e["msg"] == "unhandled" and "kaboom" in e["error"] for e in logs)


def test_dsn_set_reports_the_error_to_sentry(recorder: Recorder) -> None:
    dsn = f"http://publickey@127.0.0.1:{recorder.port}/1"
    result, _ = run_child({"SENTRY_DSN": dsn})
    assert result == {"statuses": [200, 500], "sentry_loaded": True}
    assert any(b"kaboom" in body for body in recorder.bodies)
