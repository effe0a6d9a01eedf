"""The check that nothing blocks the event loop (tests/loopwatch.py) catches what it must,
and only that."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tests import loopwatch

pytestmark = pytest.mark.blocks_loop("blocks the loop on purpose, to see the check catch it")


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def _hits(step: object) -> list[str]:
    with loopwatch.watching() as watch:
        await asyncio.get_running_loop().create_task(step)  # type: ignore[arg-type]
    return watch.hits


async def test_a_sleep_on_the_loop_is_caught() -> None:
    async def step() -> None:
        time.sleep(0.001)  # any blocking sleep, however short

    hits = await _hits(step())
    assert any("time.sleep" in h for h in hits), hits


async def test_cpu_work_on_the_loop_is_caught() -> None:
    async def step() -> None:
        _burn(0.03)

    hits = await _hits(step())
    assert any(h.split(" ms of CPU")[0].isdigit() and int(h.split(" ms")[0]) >= 20 for h in hits), hits


async def test_a_blocking_connect_and_lookup_are_caught() -> None:
    async def step() -> None:
        with socket.socket() as s, socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            s.connect(srv.getsockname())
            socket.getaddrinfo("127.0.0.1", 80)

    hits = await _hits(step())
    assert any("socket.connect" in h for h in hits) and any("socket.getaddrinfo" in h for h in hits), hits


async def test_waiting_and_work_in_threads_are_not() -> None:
    async def step() -> None:
        await asyncio.sleep(0.03)
        await asyncio.to_thread(time.sleep, 0.03)
        await asyncio.to_thread(_burn, 0.03)
        reader, writer = await asyncio.open_connection("127.0.0.1", server_port)  # non-blocking connect
        writer.close()

    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    server_port = server.sockets[0].getsockname()[1]
    async with server:
        assert await _hits(step()) == []
