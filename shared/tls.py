"""One TLS context for every outbound HTTPS client of the process.

Building a context (loading the CA bundle) costs 45-70 ms of CPU, and httpx builds a new one
for every client it creates: done in a request, that holds the event loop and every request
on it. Here the context is built once; `warm()` builds it at start-up, in a worker thread,
and each client after that costs a fraction of a millisecond.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

_context: ssl.SSLContext | None = None
_lock = threading.Lock()


def context() -> ssl.SSLContext:
    """The process's client TLS context (certifi's CA bundle, as httpx uses by default)."""
    global _context
    if _context is None:
        with _lock:
            if _context is None:
                import certifi

                _context = ssl.create_default_context(cafile=certifi.where())
    return _context


def client(**kw: Any) -> Any:
    """An `httpx.AsyncClient` on the shared context (arguments as httpx's own)."""
    import httpx

    return httpx.AsyncClient(verify=context(), **kw)


def warm() -> None:
    """Build the context and import httpx's client stack: for a worker thread at start-up."""
    import httpx

    httpx.AsyncClient(verify=context())  # the first client imports httpcore's transports
