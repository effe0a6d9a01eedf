"""A small HTTP/1.1 load generator on raw asyncio streams (keep-alive connections).

Two modes:
- `closed_loop`: N connections, each sends its next request when the previous answered
  (throughput at saturation);
- `open_loop`: requests start at a fixed arrival rate whatever the server does, so a slow
  server cannot hide latency by slowing the client down (wrk2-style); latency is measured
  from the request's scheduled start.

It is much lighter than an HTTP client library, so on a 2-core machine the server, not
the generator, is what saturates.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


def build_request(method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    elapsed: float = 0.0
    late: int = 0  # open loop: requests that could not even start on time
    #: open loop with labels: latencies and statuses per label
    by_label: dict[str, Result] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        k = min(len(data) - 1, max(0, int(round(p / 100 * (len(data) - 1)))))
        return data[k]

    def summary(self) -> dict[str, float]:
        return {
            "requests": self.count,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.pct(50), 2),
            "p95_ms": round(self.pct(95), 2),
            "p99_ms": round(self.pct(99), 2),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 2) if self.latencies_ms else float("nan"),
            "errors": self.errors,
            "non_2xx": sum(n for s, n in self.statuses.items() if not 200 <= s < 400),
        }


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def send(self, raw: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value.strip())
            elif lname == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout) if length else b""
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except Exception:
                pass
        self.reader = self.writer = None


async def closed_loop(
    host: str, port: int, requests: Sequence[bytes], *, connections: int = 32, duration: float = 5.0, warmup: float = 1.0
) -> Result:
    result = Result()
    cycle = itertools.cycle(requests)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker() -> None:
        conn = Connection(host, port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    status, _ = await conn.send(next(cycle))
                except Exception:
                    if t0 >= measure_from:
                        result.errors += 1
                    await conn.close()
                    continue
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    result.latencies_ms.append((t1 - t0) * 1000)
                    result.statuses[status] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    result.elapsed = duration
    return result


async def open_loop(
    host: str, port: int, requests: Sequence[bytes], *, rate: float, duration: float = 5.0, max_connections: int = 256,
    timeout: float = 5.0, labels: Sequence[str] | None = None,
) -> Result:
    """Start `rate` requests per second for `duration` seconds on a pool of connections.
    With `labels` (one per request), `result.by_label` splits the figures by label."""
    result = Result()
    cycle = itertools.cycle(range(len(requests)))
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(max_connections):
        idle.put_nowait(Connection(host, port))
    total = int(rate * duration)
    start = time.perf_counter() + 0.05
    tasks: list[asyncio.Task[None]] = []

    async def one(scheduled: float, i: int) -> None:
        part = result.by_label.setdefault(labels[i], Result()) if labels else None
        conn = await idle.get()
        try:
            status, _ = await conn.send(requests[i], timeout=timeout)
            ms = (time.perf_counter() - scheduled) * 1000
            result.latencies_ms.append(ms)
            result.statuses[status] += 1
            if part is not None:
                part.latencies_ms.append(ms)
                part.statuses[status] += 1
        except Exception:
            result.errors += 1
            if part is not None:
                part.errors += 1
            await conn.close()
        finally:
            idle.put_nowait(conn)

    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.05:
            result.late += 1
        tasks.append(asyncio.create_task(one(scheduled, next(cycle))))
    await asyncio.gather(*tasks)
    result.elapsed = duration
    for part in result.by_label.values():
        part.elapsed = duration
    while not idle.empty():
        await idle.get_nowait().close()
    return result
