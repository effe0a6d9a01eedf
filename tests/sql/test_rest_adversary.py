"""The adversarial REST suite: user A (and `anon`) going straight to the database the way the
REST API does (role + `request.jwt.claims` set locally in one transaction), against EVERY
table, column and function the catalog lists, so a table or function added later is attacked
without anyone writing a test for it. For each, A tries to

- read other people's rows,
- write other people's rows (update every column, delete, insert a copy of theirs),
- give away or take over a row (update the owner column of their own),
- write server-owned columns of their own rows,
- call functions that are the service's,
- flood triggers (the same no-op write 50 times; re-inserting what is already there),

and every attempt must be refused or have no effect. Who owns a row, and what A may write,
come from tests/sql/privileges.toml (its [owners] and grants), which test_privileges.py
holds equal to the catalog. Every attempt runs in a transaction that is rolled back, so a
failing attempt changes nothing either.

Marked `rest_adversary` (in the default run; `-m rest_adversary` runs it alone).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests import factories as f
from tests.sql.privileges import OURS_CLASS, OURS_PROC, SCHEMAS_SQL, AllowList

pytestmark = pytest.mark.rest_adversary

INSUFFICIENT_PRIVILEGE = "42501"


@dataclass
class Table:
    name: str  # schema.table, quoted as needed
    ident: sql.Composable
    columns: list[str]  # writable ones (no generated columns)
    owners: list[str] | None  # None: the API roles may not touch it at all
    rows_json: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Function:
    name: str
    call: str  # "select schema.f(null::t1, ...)"


class Outcome:
    def __init__(self, sqlstate: str | None = None, rowcount: int = 0, rows: list[dict[str, Any]] | None = None):
        self.sqlstate, self.rowcount, self.rows = sqlstate, rowcount, rows or []

    @property
    def refused(self) -> bool:
        return self.sqlstate == INSUFFICIENT_PRIVILEGE

    def __repr__(self) -> str:
        return f"Outcome(sqlstate={self.sqlstate}, rowcount={self.rowcount}, rows={self.rows[:2]})"


class Rest:
    """One request as PostgREST runs it: BEGIN, the role and claims set locally, the
    statement, and here always ROLLBACK."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def run(self, role: str, user_id: str | None, statement: Any, params: Any = None) -> Outcome:
        from psycopg.rows import dict_row

        claims = json.dumps({"sub": user_id, "role": role} if user_id else {"role": role})
        try:
            async with self.conn.transaction(force_rollback=True):
                await self.conn.execute(
                    "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)", (role, claims)
                )
                cur = self.conn.cursor(row_factory=dict_row)
                await cur.execute(statement, params)
                rows = await cur.fetchall() if cur.description else []
                return Outcome(None, cur.rowcount, rows)
        except psycopg.Error as exc:
            return Outcome(exc.sqlstate)


# -- the catalog -------------------------------------------------------------------------------


async def catalog(conn: psycopg.AsyncConnection[Any], allow: AllowList) -> tuple[list[Table], list[Function]]:
    cur = await conn.execute(
        f"select n.nspname, c.relname,"
        f" array(select a.attname::text from pg_catalog.pg_attribute a where a.attrelid = c.oid and a.attnum > 0"
        f"       and not a.attisdropped and a.attgenerated = '' order by a.attnum)"
        f" from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
        f" where n.oid in ({SCHEMAS_SQL}) and c.relkind in ('r', 'p', 'v', 'm', 'f') and {OURS_CLASS}"
        f" order by 1, 2"
    )
    tables = []
    for schema, name, columns in await cur.fetchall():
        qualified = f"{schema}.{name}"
        tables.append(Table(qualified, sql.Identifier(schema, name), list(columns), allow.owners.get(qualified)))
    cur = await conn.execute(
        f"select format('%I.%I', n.nspname, p.proname), p.prokind::text,"
        f" array(select format_type(t, null) from unnest(p.proargtypes::oid[]) t)"
        f" from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
        f" where n.oid in ({SCHEMAS_SQL}) and {OURS_PROC} order by 1"
    )
    functions = []
    for name, kind, args in await cur.fetchall():
        assert kind == "f", f"{name}: a {kind!r} routine; teach this suite to call it"
        # `(select null::t)`, not `null::t`: the planner folds a STRICT function of a null
        # constant to null without ever reaching the privilege check (nor running it)
        nulls = ", ".join(f"(select null::{a})" for a in args)
        functions.append(Function(f"{name}({', '.join(args)})", f"select {name}({nulls})"))
    return tables, functions


def owned_by(table: Table, uid: str) -> sql.Composable:
    """`(o1 = uid or o2 = uid)` (false for a table without owner columns)."""
    if not table.owners:
        return sql.SQL("false")
    return sql.SQL("(") + sql.SQL(" or ").join(
        sql.SQL("coalesce({} = {}, false)").format(sql.Identifier(o), sql.Literal(uid)) for o in table.owners
    ) + sql.SQL(")")


def is_own(table: Table, row: dict[str, Any], uid: str) -> bool:
    return any(str(row.get(o)) == uid for o in table.owners or [])


# -- the world ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def world(database_url: str) -> dict[str, str]:
    """A (the attacker), B (the victim), C (someone both interact with): one row of A's and
    one of B's in every table the API roles can reach."""
    a, b, c = [await f.create_user(database_url, embedding=[0.5] * 64) for _ in range(3)]
    artist = await f.add_artist(database_url, "Adversary Artist")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for uid in (a, b):
            await f.add_purchase(conn, uid, 10, artist_id=artist)
            await f.set_budget(conn, uid, 100)
            await f.add_goal(conn, uid)
            await f.follow(conn, uid, artist)
            await f.block(conn, uid, c)
            await f.add_swipe(conn, uid, c, "like")
            await f.add_match(conn, uid, c)
            await f.add_media(conn, uid)
            await f.add_subscription(conn, uid)
            await f.add_user_event(conn, uid)
            await conn.execute(
                "insert into public.swipe_requests (user_id, idempotency_key, request_hash, response)"
                " values (%s, 'adversary', '', '{}')", (uid,))
            await conn.execute(
                "insert into public.device_tokens (user_id, platform, token) values (%s, 'fcm', %s)",
                (uid, f"token-{uuid.uuid4()}"))
            await conn.execute("insert into public.notification_preferences (user_id) values (%s)", (uid,))
    return {"a": a, "b": b, "c": c}


@pytest.fixture(scope="module")
async def rest(database_url: str) -> AsyncIterator[Rest]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield Rest(conn)


@pytest.fixture(scope="module")
async def schema(database_url: str, world: dict[str, str]) -> tuple[list[Table], list[Function], AllowList]:
    allow = AllowList.load()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        tables, functions = await catalog(conn, allow)
        for t in tables:
            if t.owners is None:
                continue
            # the world's rows (A's and B's), or a few of a reference table: not the whole
            # table, which other tests of the run may have filled
            where = (sql.SQL("{} or {}").format(owned_by(t, world["a"]), owned_by(t, world["b"])) if t.owners
                     else sql.SQL("true"))
            cur = await conn.execute(sql.SQL("select to_jsonb(t) as j from {} t where {} limit 20").format(t.ident, where))
            t.rows_json = [r[0] for r in await cur.fetchall()]
    return tables, functions, allow


def reachable(tables: list[Table]) -> list[Table]:
    return [t for t in tables if t.owners is not None]


# -- tests -------------------------------------------------------------------------------------


async def test_the_suite_covers_what_it_attacks(schema: Any, world: dict[str, str]) -> None:
    """Every table users can reach holds a row of A's and one of someone else's (else the
    attempts below prove nothing): a new table must be seeded in `world`."""
    tables, functions, _ = schema
    assert len(tables) >= 25 and len(functions) >= 25
    for t in reachable(tables):
        others = [r for r in t.rows_json if not is_own(t, r, world["a"])]
        assert others, f"{t.name}: no row of anybody but A; seed one in the world fixture"
        if t.owners:
            assert any(is_own(t, r, world["a"]) for r in t.rows_json), f"{t.name}: seed a row of A's"


@pytest.mark.parametrize("role", ["authenticated", "anon"])
async def test_nobody_reads_other_peoples_rows(rest: Rest, schema: Any, world: dict[str, str], role: str) -> None:
    tables, _, _ = schema
    a = world["a"] if role == "authenticated" else None
    for t in tables:
        for cols in [sql.SQL("*"), *(sql.Identifier(c) for c in t.columns)]:
            pick = cols if t.owners in (None, []) else sql.SQL("{}, {}").format(
                cols, sql.SQL(", ").join(sql.Identifier(o) for o in t.owners or []))
            got = await rest.run(role, a, sql.SQL("select {} from {}").format(pick, t.ident))
            if got.refused:
                continue
            assert got.sqlstate is None, (t.name, got)
            assert t.owners is not None, f"{role} read {t.name}, which the allow-list says nobody may touch"
            if t.owners:  # reference data (owners = []) is everyone's
                strangers = [r for r in got.rows if not (a and is_own(t, r, a))]
                assert not strangers, f"{role} read someone else's row of {t.name}: {strangers[:1]}"


@pytest.mark.parametrize("role", ["authenticated", "anon"])
async def test_nobody_writes_other_peoples_rows(rest: Rest, schema: Any, world: dict[str, str], role: str) -> None:
    tables, _, _ = schema
    a = world["a"] if role == "authenticated" else None
    for t in tables:
        theirs = sql.SQL("not {}").format(owned_by(t, a)) if a else sql.SQL("true")
        for c in t.columns:
            got = await rest.run(role, a, sql.SQL("update {} set {c} = {c} where {}").format(
                t.ident, theirs, c=sql.Identifier(c)))
            assert got.refused or (got.sqlstate is None and got.rowcount == 0), (t.name, c, got)
        got = await rest.run(role, a, sql.SQL("delete from {} where {}").format(t.ident, theirs))
        assert got.refused or (got.sqlstate is None and got.rowcount == 0), (t.name, "delete", got)
        if t.owners is None:  # nobody may write here at all: not even an empty row gets past the grants
            got = await rest.run(role, a, sql.SQL("insert into {} default values").format(t.ident))
            assert got.refused, (t.name, "insert", got)
        # a copy of someone else's row: refused before any constraint is checked
        for row in [r for r in t.rows_json if not (a and is_own(t, r, a))][:1]:
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in t.columns)
            got = await rest.run(role, a, sql.SQL("insert into {t} ({cols}) select {cols} from jsonb_populate_record(null::{t}, %s)").format(
                t=t.ident, cols=cols), (json.dumps(row),))
            assert got.refused, (t.name, "insert a copy of someone else's row", got)


async def test_nobody_gives_away_or_takes_over_a_row(rest: Rest, schema: Any, world: dict[str, str]) -> None:
    tables, _, _ = schema
    a, b = world["a"], world["b"]
    for t in reachable(tables):
        for owner in t.owners or []:
            got = await rest.run("authenticated", a, sql.SQL("update {} set {o} = %s where {}").format(
                t.ident, owned_by(t, a), o=sql.Identifier(owner)), (b,))
            assert got.refused or (got.sqlstate is None and got.rowcount == 0), (t.name, owner, got)


async def test_server_owned_columns_are_refused(rest: Rest, schema: Any, world: dict[str, str]) -> None:
    """Of A's own rows, A may update exactly the columns the allow-list grants; every other
    column (score, hidden, deleted_at, a media row's status, a tier ...) is refused."""
    tables, _, allow = schema
    a = world["a"]
    granted = allow.expected_grants()
    for t in reachable(tables):
        table_wide = (f"table {t.name}", "authenticated", "UPDATE") in granted
        for c in t.columns:
            may = table_wide or (f"column {t.name}.{c}", "authenticated", "UPDATE") in granted
            got = await rest.run("authenticated", a, sql.SQL("update {} set {c} = {c} where {}").format(
                t.ident, owned_by(t, a), c=sql.Identifier(c)))
            if may:
                assert got.sqlstate is None, (t.name, c, got)
            else:
                assert got.refused, f"A updated {t.name}.{c}, which the allow-list does not grant: {got}"


@pytest.mark.parametrize("role", ["authenticated", "anon"])
async def test_service_functions_are_refused(rest: Rest, schema: Any, world: dict[str, str], role: str) -> None:
    _, functions, allow = schema
    a = world["a"] if role == "authenticated" else None
    callable_ = {obj.split(" ", 1)[1] for obj, r, p in allow.expected_grants() if r == role and "function" in obj}
    refused = 0
    for fn in functions:
        got = await rest.run(role, a, fn.call)
        if fn.name in callable_:
            assert not got.refused, (fn.name, got)
        else:
            assert got.refused, f"{role} called {fn.name}: {got}"
            refused += 1
    assert refused >= 25


async def test_flooding_triggers_has_no_effect(rest: Rest, schema: Any, world: dict[str, str], database_url: str) -> None:
    """50 no-op updates of every column A may update, on every table, and re-inserting rows
    A already has: afterwards not one row of any table differs (no outbox event, no cache
    invalidation, no updated_at, no candidate row rewritten)."""
    tables, _, allow = schema
    a = world["a"]
    granted = allow.expected_grants()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:

        async def fingerprint() -> dict[str, str]:
            out = {}
            for t in tables:
                cur = await conn.execute(
                    sql.SQL("select md5(coalesce(string_agg(t::text, ',' order by t::text), '')) from {} t").format(t.ident))
                out[t.name] = (await cur.fetchone())[0]  # type: ignore[index]
            return out

        async def fifty_times(statement: Any, params: Any = None) -> int:
            """As A, each time in its own committed transaction (the flood must have no
            effect, not merely vanish in a rollback). Returns the last row count."""
            rowcount = 0
            for _ in range(50):
                async with conn.transaction():
                    await conn.execute("select set_config('role', 'authenticated', true),"
                                       " set_config('request.jwt.claims', %s, true)",
                                       (json.dumps({"sub": a, "role": "authenticated"}),))
                    rowcount = (await conn.execute(statement, params)).rowcount
            return rowcount

        before = await fingerprint()
        floods = 0
        for t in reachable(tables):
            table_wide = (f"table {t.name}", "authenticated", "UPDATE") in granted
            cols = [c for c in t.columns if table_wide or (f"column {t.name}.{c}", "authenticated", "UPDATE") in granted]
            if cols:
                noop = sql.SQL("update {} set {} where {}").format(
                    t.ident, sql.SQL(", ").join(sql.SQL("{c} = {c}").format(c=sql.Identifier(c)) for c in cols),
                    owned_by(t, a))
                assert await fifty_times(noop) >= 1, (t.name, "A's own rows must be there to flood")
                floods += 1
            if (f"table {t.name}", "authenticated", "INSERT") in granted:
                cols_sql = sql.SQL(", ").join(sql.Identifier(c) for c in t.columns)
                for row in [r for r in t.rows_json if is_own(t, r, a)][:1]:
                    again = sql.SQL("insert into {t} ({cols}) select {cols} from jsonb_populate_record(null::{t}, %s)"
                                    " on conflict do nothing").format(t=t.ident, cols=cols_sql)
                    assert await fifty_times(again, (json.dumps(row),)) == 0, t.name
                    floods += 1
        assert floods >= 8
        after = await fingerprint()
    changed = sorted(name for name in before if before[name] != after[name])
    assert not changed, f"a flood of no-op writes changed {changed}"
