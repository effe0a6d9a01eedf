"""CloudWatch Embedded Metric Format: `shared.observability.metrics` written as EMF lines on
stdout, through Powertools for AWS Lambda's EMF provider (which validates names, units and
the schema).

Namespace `edgefn`; every metric carries two dimension sets, `[service, function]` and
`[service]` (service = `edgefn-<stage>`), so alarms can watch one function or the whole
stack. Metrics:

- `Requests`, `Status2xx` ... `Status5xx` (Count) and `Latency` (Milliseconds, every value);
- `ColdStart` (Count, 1 on the first flush of a process);
- every counter the code increments, under its own name: `cache.hit`, `cache.miss`,
  `cache.stale`, `ratelimit.limited`, `ratelimit.blocked_local`,
  `ratelimit.fail_open`, `ratelimit.fail_closed`, `webhooks.<provider>.<outcome>` ...;
- what a scheduled run reports: its numeric fields as `scheduled.<field>`, and the gauges a
  function registers (`FunctionApp.gauge`), e.g. `webhooks.pending`, `outbox.oldest_age_s`.

On Lambda one line per invocation, written before the handler returns. On Cloud Run one
line per `FLUSH_INTERVAL_S` (checked on the request path: no thread) and at shutdown; Cloud
Logging keeps each line as a JSON payload, from which log-based metrics read the same
fields (infra/README.md, "Metrics on Cloud Run"). Enabled by the setting
`EDGEFN_METRICS=emf`, which the deploy files set; off locally and in tests unless asked for.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from shared.observability import metrics

NAMESPACE = "edgefn"
FLUSH_INTERVAL_S = 60.0
#: CloudWatch takes at most 100 values of one metric in one EMF document, and Powertools
#: prints a document by itself when a metric reaches 100: stay one below
MAX_VALUES = 99


class EMF:
    def __init__(self, function: str, *, stream: TextIO | None = None, enabled: bool = False, stage: str = "dev") -> None:
        self.function = function
        self.service = f"edgefn-{stage}"
        self.stream = stream
        self.enabled = enabled
        self._cold = True
        self._last = time.monotonic()

    def configure(self, settings: Any) -> None:
        """Take EDGEFN_METRICS and EDGEFN_STAGE from the function's settings."""
        self.enabled = settings.edgefn_metrics == "emf"
        self.service = f"edgefn-{settings.edgefn_stage}"

    def flush(self, extra: dict[str, float] | None = None) -> None:
        """Write everything counted since the last flush (nothing when nothing happened)."""
        if not self.enabled:
            return
        counters, latencies = metrics.take()
        self._last = time.monotonic()
        values: dict[str, list[float]] = {}
        requests = 0
        for key, count in counters.items():
            if isinstance(key, int):
                requests += count
                name = f"Status{key // 100}xx"
                values[name] = [values.get(name, [0.0])[0] + count]
            else:
                values[key] = [float(count)]
        if requests:
            values["Requests"] = [float(requests)]
        if self._cold:
            values["ColdStart"] = [1.0]
            self._cold = False
        for key, value in (extra or {}).items():
            values[key] = [float(value)]
        if not values and not latencies:
            return
        chunks = [latencies[i:i + MAX_VALUES] for i in range(0, len(latencies), MAX_VALUES)] or [[]]
        for n, chunk in enumerate(chunks):
            self._write(values if n == 0 else {}, chunk)

    def tick(self) -> None:
        """Flush when the interval has passed (long-lived processes: Cloud Run, local)."""
        if self.enabled and time.monotonic() - self._last >= FLUSH_INTERVAL_S:
            self.flush()

    def _write(self, values: dict[str, list[float]], latencies: list[float]) -> None:
        from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

        emf = AmazonCloudWatchEMFProvider(namespace=NAMESPACE)
        emf.add_dimension("service", self.service)
        emf.add_dimension("function", self.function)
        emf.add_dimensions(service=self.service)
        for name, vals in values.items():
            unit = "Milliseconds" if name.endswith("_ms") else "Seconds" if name.endswith("_s") else "Count"
            for v in vals:
                emf.add_metric(name=name, unit=unit, value=v)
        for ms in latencies:
            emf.add_metric(name="Latency", unit="Milliseconds", value=ms)
        doc = emf.serialize_metric_set()
        stream = self.stream or sys.stdout
        stream.write(json.dumps(doc, separators=(",", ":")) + "\n")
        stream.flush()


def warm() -> None:
    """Import the EMF provider now (init), not on the first request's flush (~40 ms)."""
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf import cloudwatch  # noqa: F401
