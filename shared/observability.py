"""Request ids, one JSON log line per request, counters and latencies (written out as
CloudWatch EMF by `shared.emf`), and Sentry.

`sentry_sdk` is imported only when `SENTRY_DSN` is set: on Lambda at init, with its AWS
Lambda integration (`shared.app`), elsewhere on the first error; functions without Sentry
pay nothing at cold start.
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
        if enabled is None:  # until a function's settings say (`configure`): tools, bench
            enabled = os.environ.get("EDGEFN_ACCESS_LOG", "1").lower() not in ("0", "false", "no", "off")
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


#: the deployed version: Lambda's published version, Cloud Run's revision, else "local"
VERSION = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION") or os.environ.get("K_REVISION") or "local"


class Metrics:
    """In-process counters and request latencies since the last flush; cheap, thread-safe
    enough for increments, clearable in tests. Keys are names, or an HTTP status (an int)
    for the per-status request counts."""

    def __init__(self) -> None:
        self.counters: Counter[str | int] = Counter()
        self.latencies_ms: list[float] = []

    def incr(self, name: str | int, value: float = 1) -> None:
        self.counters[name] += value

    def observe(self, status: int, ms: float) -> None:
        """One answered request: its status and how long it took."""
        self.counters[status] += 1
        self.latencies_ms.append(ms)

    def snapshot(self) -> dict[str | int, int]:
        return dict(self.counters)

    def take(self) -> tuple[dict[str | int, int], list[float]]:
        """Everything since the last take, and start afresh (what a flush writes)."""
        counters, latencies = dict(self.counters), self.latencies_ms
        self.counters.clear()
        self.latencies_ms = []
        return counters, latencies

    def clear(self) -> None:
        self.counters.clear()
        self.latencies_ms = []


metrics = Metrics()


class _Sentry:
    def __init__(self) -> None:
        self._initialised = False
        self._lock = threading.Lock()
        self.dsn: str | None = None
        self.traces_sample_rate = 0.0
        self.environment = "dev"

    def configure(self, settings: Any) -> None:
        """Take SENTRY_DSN, SENTRY_TRACES_SAMPLE_RATE and EDGEFN_STAGE from the settings."""
        self.dsn = settings.sentry_dsn
        self.traces_sample_rate = settings.sentry_traces_sample_rate
        self.environment = settings.edgefn_stage

    @property
    def enabled(self) -> bool:
        return bool(self.dsn)

    def _init(self) -> Any:
        with self._lock:
            import sentry_sdk  # lazy: ~150 ms of import we only pay when configured

            from shared.scrub import sentry_options

            if not self._initialised:
                integrations = []
                if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
                    # wraps each invocation: Lambda context on events, a warning before the
                    # timeout, and a flush before the runtime freezes the process
                    from sentry_sdk.integrations.aws_lambda import AwsLambdaIntegration

                    integrations.append(AwsLambdaIntegration(timeout_warning=True))
                sentry_sdk.init(
                    dsn=self.dsn,
                    traces_sample_rate=self.traces_sample_rate,
                    environment=self.environment,
                    release=VERSION,
                    integrations=integrations,
                    **sentry_options(),  # no locals, no PII, every event scrubbed
                )
                self._initialised = True
            return sentry_sdk

    def init(self) -> None:
        """Initialise now (Lambda's init phase: the integration must be in place before the
        first invocation); nothing without SENTRY_DSN."""
        if self.enabled:
            self._init()

    def flush(self, timeout: float = 2.0) -> None:
        """Send what is queued before the process may freeze (end of a Lambda invocation)."""
        if self._initialised:
            import sentry_sdk

            sentry_sdk.flush(timeout=timeout)

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


def configure(settings: Any) -> None:
    """Apply a function's settings (EDGEFN_ACCESS_LOG, Sentry's keys) to this process."""
    json_log.enabled = settings.edgefn_access_log
    sentry.configure(settings)
