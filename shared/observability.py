"""Request ids, one JSON log line per request, counters, and Sentry initialised lazily.

`sentry_sdk` is imported only when `SENTRY_DSN` is set, and only on the first error or
the first request that needs it, so functions without Sentry pay nothing at cold start.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from typing import Any

from shared.envelope import dumps

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")

logger = logging.getLogger("edgefn")


def new_request_id(incoming: str | None = None) -> str:
    """Reuse a well-formed upstream id (CloudFront / API Gateway / caller), else mint one."""
    if incoming and _REQUEST_ID_OK.match(incoming):
        return incoming
    return os.urandom(12).hex()


class JsonLogger:
    """Writes one JSON object per line to stderr (CloudWatch / Cloud Logging parse it)."""

    def __init__(self, stream: Any = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = os.environ.get("EDGEFN_ACCESS_LOG", "1") not in ("0", "false", "no")
        self.enabled = enabled
        self._lock = threading.Lock()
        try:
            self._fd: int | None = self.stream.fileno() if stream is None else None
        except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO
            self._fd = None

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"ts": round(time.time(), 3), "level": level, "msg": msg, **fields}
        line = dumps(record) + b"\n"
        try:
            if self._fd is not None:
                os.write(self._fd, line)  # one syscall, one whole line: no interleaving
            else:
                with self._lock:
                    self.stream.write(line.decode())
                    self.stream.flush()
        except Exception:  # logging must never break a request
            pass


json_log = JsonLogger()


class Metrics:
    """In-process counters; cheap, thread-safe enough for increments, clearable in tests.
    Keys are names, or an HTTP status (an int) for the per-status request counts."""

    def __init__(self) -> None:
        self.counters: Counter[str | int] = Counter()

    def incr(self, name: str | int, value: int = 1) -> None:
        self.counters[name] += value

    def snapshot(self) -> dict[str | int, int]:
        return dict(self.counters)

    def clear(self) -> None:
        self.counters.clear()


metrics = Metrics()


class _Sentry:
    def __init__(self) -> None:
        self._initialised = False
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(os.environ.get("SENTRY_DSN"))

    def _init(self) -> Any:
        with self._lock:
            import sentry_sdk  # lazy: ~150 ms of import we only pay when configured

            if not self._initialised:
                sentry_sdk.init(
                    dsn=os.environ["SENTRY_DSN"],
                    traces_sample_rate=float(os.environ.get("SENTRY_TRACES_SAMPLE_RATE", "0")),
                    send_default_pii=False,
                    environment=os.environ.get("EDGEFN_STAGE", "dev"),
                )
                self._initialised = True
            return sentry_sdk

    def capture(self, exc: BaseException, **tags: str) -> None:
        if not self.enabled:
            return
        try:
            sdk = self._init()
            with sdk.new_scope() as scope:
                for k, v in tags.items():
                    scope.set_tag(k, v)
                sdk.capture_exception(exc)
        except Exception:
            logger.exception("sentry capture failed")


sentry = _Sentry()
