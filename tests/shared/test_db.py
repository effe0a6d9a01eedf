"""The Postgres pool: idle connections the server closed (a restart, a failover, an idle
kill) are dropped before use, so the first requests after the database comes back succeed."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from shared.db import Database


@pytest.mark.direct_postgres  # kills its connections' backends; behind a pooler they are shared
async def test_idle_connections_the_server_closed_are_not_lent(database_url: str) -> None:
    db = Database(database_url, max_size=3)
    try:
        # three connections in the pool, all idle
        pids = await asyncio.gather(*(db.fetch("select pg_backend_pid() as pid, pg_sleep(0.05)", service=True)
                                      for _ in range(3)))
        ours = sorted({rows[0]["pid"] for rows in pids})
        assert len(ours) == 3
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            await admin.execute("select pg_terminate_backend(pid) from unnest(%s::int[]) as pid", (ours,))
        await asyncio.sleep(0.2)  # the server's goodbye reaches the idle sockets
        for _ in range(4):  # each of these would otherwise fail on a dead connection
            rows = await db.fetch("select pg_backend_pid() as pid", service=True)
            assert rows[0]["pid"] not in ours
    finally:
        await db.close()


async def test_a_caller_cancelled_mid_statement_never_leaks_into_the_next(database_url: str) -> None:
    """Deadlines cancel wherever the task waits: in BEGIN, in a statement, in COMMIT. The
    connection is then closed, not lent again with a statement in flight or a result unread
    (the next caller would read the previous one's rows)."""
    import contextlib

    db = Database(database_url, max_size=1)  # one connection: every caller gets the same one back
    try:
        for i in range(60):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.001 * (i % 8)):
                    if i % 2:  # one round trip in pipeline mode
                        await db.fetch("select pg_sleep(0.002), %s::int as n", (-i,), service=True)
                    else:
                        async with db.transaction(service=True) as conn, conn.pipeline():
                            await conn.execute("select pg_sleep(0.002)")
                            cur = await conn.execute("insert into public.artists (name) values (%s) returning id",
                                                     (f"cancel-{i}",))
                            await cur.fetchone()
            rows = await db.fetch("select %s::int as n", (i,), service=True)
            assert rows == [{"n": i}]
    finally:
        await db.close()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            await admin.execute("delete from public.artists where name like 'cancel-%'")
