"""Nothing may hold the event loop: asyncio's slow-callback detection, made exact.

asyncio's own detector (debug mode, `loop.slow_callback_duration`) times each callback by
the wall clock. In this test process that also counts time the loop thread spent waiting
for a CPU (a shared 2-core runner) or for the GIL (moto, the JWKS server and the provider
stand-ins serve from threads of this process): it flags innocent callbacks and flakes. So
every `Handle._run` (every callback and task step, on every loop) is watched for the two
ways a callback really holds the loop:

- it computes: the loop thread's own CPU time during the callback (`time.thread_time`),
  garbage-collection pauses taken off (the collector runs wherever an allocation trips it),
  reaches `SLOW_S` (20 ms);
- it blocks: the loop thread makes a blocking call (a blocking socket's connect, a DNS
  lookup, starting or waiting for a process: the interpreter's audit events; `time.sleep`,
  which raises no audit event before Python 3.12: wrapped while watching).

A watchdog thread samples the stack of a callback that runs long, so a hit says where.
`LOOPWATCH_SCAN_MS=8 pytest` lowers the limit for one run, to find what comes close to it
(a slower machine would cross it).
"""

from __future__ import annotations

import asyncio.events
import gc
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

SLOW_S = float(os.environ.get("LOOPWATCH_SCAN_MS", "20")) / 1000
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: audit events that mean the calling thread blocks (a socket's connect only when the
#: socket is a blocking one: the event loop connects non-blocking sockets itself)
BLOCKING_EVENTS = {"time.sleep", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                   "socket.connect", "os.waitpid", "subprocess.Popen"}


def _stack(frame: Any) -> str:
    """Frames from the innermost of our own code inwards; ours marked with `*`."""
    frames = [fs for fs in traceback.extract_stack(frame) if not fs.filename.startswith("<frozen")]
    ours = [i for i, fs in enumerate(frames) if fs.filename.startswith(_ROOT) and "/.venv/" not in fs.filename
            and not fs.filename.endswith("loopwatch.py")]
    start = max(0, (ours[-1] if ours else len(frames)) - 1)
    lines = []
    shown = frames[start:]
    if len(shown) > 14:  # keep where our code called in, and the innermost frames
        shown = shown[:3] + shown[-11:]
    for fs in shown:
        mine = fs.filename.startswith(_ROOT) and "/.venv/" not in fs.filename
        where = os.path.relpath(fs.filename, _ROOT) if mine else os.path.basename(fs.filename)
        lines.append(f"{'*' if mine else ' '} {where}:{fs.lineno} {fs.name}")
    return "\n      ".join(lines)


def _from_asyncio_subprocess(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.endswith(os.path.join("asyncio", "base_subprocess.py")):
            return True
        frame = frame.f_back
    return False


@dataclass
class Watch:
    hits: list[str] = field(default_factory=list)
    #: thread id -> [callback start (perf), [(ms into it, sampled stack) ...], [blocking calls]]
    running: dict[int, list[Any]] = field(default_factory=dict)


@contextmanager
def watching(threshold: float = SLOW_S) -> Iterator[Watch]:
    watch = Watch()
    original = asyncio.events.Handle._run
    perf, cpu = time.perf_counter, time.thread_time
    stop = threading.Event()
    gc_cpu = threading.local()

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_cpu.started = cpu()
        else:
            gc_cpu.total = getattr(gc_cpu, "total", 0.0) + cpu() - getattr(gc_cpu, "started", cpu())

    def on_audit(event: str, args: tuple[Any, ...]) -> None:
        if event not in BLOCKING_EVENTS:
            return
        slot = watch.running.get(threading.get_ident())
        if slot is None:
            return
        if event == "socket.connect" and isinstance(args[0], socket.socket) and not args[0].getblocking():
            return
        if event == "subprocess.Popen" and _from_asyncio_subprocess(sys._getframe(1)):
            return  # asyncio starts the process and reaps it off the loop
        slot[2].append(f"{event}{args[1:2] if event == 'socket.connect' else args[:1]}\n      "
                       + _stack(sys._getframe(1)))

    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if seconds > 0:
            on_audit("time.sleep", (seconds,))
        real_sleep(seconds)

    def timed_run(self: asyncio.events.Handle) -> None:
        me = threading.get_ident()
        slot = watch.running[me] = [perf(), [], []]
        c0, g0 = cpu(), getattr(gc_cpu, "total", 0.0)
        try:
            original(self)
        finally:
            computed = cpu() - c0 - (getattr(gc_cpu, "total", 0.0) - g0)
            watch.running.pop(me, None)
            what = f"{self!r:.200}"
            if computed >= threshold:
                samples = "".join(f"\n    sampled at {at:.0f} ms:\n      {stack}" for at, stack in slot[1])
                watch.hits.append(f"{computed * 1000:.0f} ms of CPU in {what}{samples}")
            for call in slot[2]:
                watch.hits.append(f"a blocking call in {what}: {call}")

    def watchdog() -> None:
        while not stop.wait(threshold / 4):
            now = perf()
            frames = None
            for tid, slot in list(watch.running.items()):
                if len(slot[1]) < 3 and now - slot[0] > threshold / 2:
                    frames = frames or sys._current_frames()
                    if tid in frames:
                        slot[1].append(((now - slot[0]) * 1000, _stack(frames[tid])))

    dog = threading.Thread(target=watchdog, name="loopwatch", daemon=True)
    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    gc.callbacks.append(on_gc)
    time.sleep = sleep
    sys.addaudithook(on_audit)  # cannot be removed; it does nothing once `running` stays empty
    dog.start()
    try:
        yield watch
    finally:
        asyncio.events.Handle._run = original  # type: ignore[method-assign]
        gc.callbacks.remove(on_gc)
        time.sleep = real_sleep
        stop.set()
        dog.join()
