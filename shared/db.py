"""Postgres access with psycopg 3.

Why psycopg 3 (not asyncpg): its pipeline mode lets a user's request run as
BEGIN + claims + query + COMMIT in ONE network round trip; `prepare_threshold=None` keeps
it safe behind Supavisor's transaction pooler; COPY is first-class for the seeder; and its
import cost (~60 ms beyond what pydantic/asyncio already load) is paid only on first use.

A user's request runs in one transaction that sets `role authenticated` and
`request.jwt.claims` locally, exactly as PostgREST does, so RLS holds even if handler code
is wrong. Service work (webhooks, the orchestrator) says so explicitly with `service`.

`service=True` together with a `principal` is the service acting for a verified user:
role `service_role`, the user's claims (so `auth.uid()` is the user). It is for database
functions a user must not reach through the REST API on their own terms (apply_swipes
spends a like quota the function has already taken); such functions are granted to
`service_role` only and do their own per-user checks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from shared import errors
from shared.context import Principal

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from shared.settings import CoreSettings

_CLAIMS_SQL = (
    "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true), "
    "set_config('request.jwt.claim.sub', %s, true), set_config('statement_timeout', %s, true)"
)


def claims_json(principal: Principal) -> str:
    claims = dict(principal.claims) if principal.claims else {}
    claims.setdefault("sub", principal.user_id)
    claims.setdefault("role", principal.role)
    return json.dumps(claims, separators=(",", ":"), default=str)


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (UUID, Decimal)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def records(rows: Sequence[Mapping[str, Any]]) -> Any:
    """A batch of rows as ONE jsonb parameter, for `jsonb_to_recordset(%s::jsonb) as x(...)`.

    psycopg dumps a list parameter element by element in Python (text arrays escaped by a
    regular expression per element): a 500-row batch sent as twelve arrays (the
    orchestrator's FINISH shape plus a jsonb payload) holds the event loop for about 16 ms of
    CPU; as one JSON document, encoded by the json module's C encoder, about 4 ms
    (`python -m bench.bulk_params`). Datetimes go as ISO 8601 with their offset, UUIDs and
    decimals as text; the column list in the SQL gives each field its type."""
    from psycopg.types.json import Jsonb

    return Jsonb(list(rows), dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=_json_default)


def _unavailable(exc: BaseException) -> errors.AppError:
    from psycopg import errors as pg_errors

    if isinstance(exc, pg_errors.QueryCanceled):
        return errors.DependencyTimeout("the database did not answer in time", code="DATABASE_TIMEOUT")
    return errors.ServiceUnavailable("the database is unavailable", code="DATABASE_UNAVAILABLE")


class Database:
    def __init__(
        self,
        dsn: str,
        *,
        read_dsn: str | None = None,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        statement_timeout_ms: int = 5000,
        acquire_timeout: float = 3.0,
    ) -> None:
        self.dsn = dsn
        self.read_dsn = read_dsn
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.statement_timeout = str(statement_timeout_ms)
        self.acquire_timeout = acquire_timeout
        self._pool: AsyncConnectionPool | None = None
        self._read_pool: AsyncConnectionPool | None = None
        #: network round trips made through the helpers (benchmarks read it)
        self.round_trips = 0

    @classmethod
    def from_settings(cls, s: CoreSettings) -> Database:
        return cls(
            s.require("database_url"),
            read_dsn=s.database_read_url,
            max_size=s.db_pool_max,
            connect_timeout=s.db_connect_timeout_s,
            statement_timeout_ms=s.db_statement_timeout_ms,
        )

    def _make_pool(self, dsn: str) -> AsyncConnectionPool:
        from psycopg_pool import AsyncConnectionPool

        return AsyncConnectionPool(
            dsn,
            min_size=0,
            max_size=self.max_size,
            open=False,
            timeout=self.acquire_timeout,
            max_idle=300,
            reconnect_timeout=0,
            kwargs={
                "autocommit": True,
                "prepare_threshold": None,  # Supavisor transaction mode: no prepared statements
                "connect_timeout": max(1, int(self.connect_timeout)),
            },
        )

    async def pool(self, read_only: bool = False) -> AsyncConnectionPool:
        if read_only and self.read_dsn:
            if self._read_pool is None:
                self._read_pool = self._make_pool(self.read_dsn)
                await self._read_pool.open(wait=False)
            return self._read_pool
        if self._pool is None:
            self._pool = self._make_pool(self.dsn)
            await self._pool.open(wait=False)
        return self._pool

    @asynccontextmanager
    async def _connection(self, pool: AsyncConnectionPool) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection, minus the idle ones the server closed meanwhile (a restart,
        a failover: what it sent on closing is already readable); the pool drops each and
        lends the next, so a restart costs no request a failure once it is back.

        A caller cancelled while it held the connection (its deadline passed: asyncio
        cancels wherever the task is waiting) may leave a statement in flight or its
        result unread; such a connection is closed, never lent again, or the next request
        would read the previous one's results. Other errors return it to the pool, which
        rolls back what is open."""
        conn = await pool.getconn()
        try:
            for _ in range(self.max_size):  # at most every idle connection is stale
                if not _closed_by_server(conn):
                    break
                await conn.close()
                await pool.putconn(conn)  # the pool discards a closed connection
                conn = await pool.getconn()
            yield conn
        except asyncio.CancelledError:
            await conn.close()  # closing also ends the server's transaction
            raise
        finally:
            await pool.putconn(conn)

    async def close(self) -> None:
        for p in (self._pool, self._read_pool):
            if p is not None:
                await p.close()
        self._pool = self._read_pool = None

    # -- one round trip ----------------------------------------------------------------

    async def fetch(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        principal: Principal | None = None,
        service: bool = False,
        read_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Run one statement in its own transaction, as the user (RLS) or as the service
        role, in one network round trip (psycopg pipeline mode)."""
        from psycopg.rows import dict_row

        role, claims, sub = self._identity(principal, service)
        try:
            pool = await self.pool(read_only)
            async with self._connection(pool) as conn:
                async with conn.pipeline() as p:
                    await conn.execute("begin read only" if read_only else "begin")
                    await conn.execute(_CLAIMS_SQL, (role, claims, sub, self.statement_timeout))
                    cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(sql, params)
                    await conn.execute("commit")
                    await p.sync()
                    self.round_trips += 1
                    rows = await cur.fetchall() if cur.description else []
                return rows
        except Exception as exc:
            mapped = _translate(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def fetchrow(self, sql: str, params: Any = None, **kw: Any) -> dict[str, Any] | None:
        rows = await self.fetch(sql, params, **kw)
        return rows[0] if rows else None

    # -- interactive transactions ---------------------------------------------------------

    @asynccontextmanager
    async def transaction(
        self, *, principal: Principal | None = None, service: bool = False, read_only: bool = False
    ) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection inside one transaction with the caller's identity set locally."""
        role, claims, sub = self._identity(principal, service)
        try:
            pool = await self.pool(read_only)
            async with self._connection(pool) as conn:
                # BEGIN and the identity in one round trip
                async with conn.pipeline():
                    await conn.execute("begin read only" if read_only else "begin")
                    await conn.execute(_CLAIMS_SQL, (role, claims, sub, self.statement_timeout))
                try:
                    yield conn
                except Exception:
                    await conn.execute("rollback")
                    raise
                else:
                    await conn.execute("commit")
                finally:
                    self.round_trips += 1
        except Exception as exc:
            mapped = _translate(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def as_user(self, principal: Principal, *, read_only: bool = False) -> Any:
        return self.transaction(principal=principal, read_only=read_only)

    def as_service(self, *, read_only: bool = False) -> Any:
        return self.transaction(service=True, read_only=read_only)

    def _identity(self, principal: Principal | None, service: bool) -> tuple[str, str, str]:
        if service:
            if principal is not None and not principal.is_service:  # acting for a verified user
                return "service_role", claims_json(principal), principal.user_id
            return "service_role", '{"role":"service_role"}', ""
        if principal is None:
            raise errors.Unauthenticated("authentication required", code="AUTH_REQUIRED")
        role = "service_role" if principal.is_service else "authenticated"
        return role, claims_json(principal), principal.user_id


def _translate(exc: Exception) -> Exception:
    """An outage (no connection from the pool in time, a broken or refused connection, a
    statement timeout) becomes a 503 domain error; anything else (a constraint violation,
    a bug) stays what it is."""
    from psycopg_pool import PoolTimeout

    if isinstance(exc, errors.AppError):
        return exc
    if isinstance(exc, PoolTimeout) or _is_connection_problem(exc):
        return _unavailable(exc)
    return exc


def _is_connection_problem(exc: BaseException) -> bool:
    from psycopg import OperationalError
    from psycopg import errors as pg_errors

    return isinstance(
        exc, (OperationalError, pg_errors.QueryCanceled, pg_errors.AdminShutdown, pg_errors.CannotConnectNow)
    )


#: public name: functions that run their own statements classify errors the same way
is_connection_problem = _is_connection_problem


def _closed_by_server(conn: Any) -> bool:
    """An idle connection has nothing to read unless the server closed it (or, rarely,
    sent a notice: that connection is dropped too, which costs only a reconnect). One
    non-blocking poll, no round trip; when the poll itself fails the connection is used
    as before and a dead one fails its request as it would have."""
    import select

    if conn.closed:
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False
