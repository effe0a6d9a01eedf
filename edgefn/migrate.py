"""`edgefn migrate`: apply `sql/migrations/*.sql` in filename order, each once.

    edgefn migrate                       # DATABASE_URL from the environment
    edgefn migrate --database-url postgresql://postgres@127.0.0.1:5432/app --dry-run

Each file runs in its own transaction and is recorded in `public.edgefn_migrations` with
the sha256 of its bytes. An applied file that changed, or disappeared, is refused: fix
forward with a new file. Two runners at once are safe: each migration transaction takes
a transaction-level advisory lock and re-checks the record before applying.

A migration's number is its name up to the first underscore ("0010a" in
"0010a_dashboard_index_lookups"); two files with the same number are refused, so the
order never depends on the words after it. A file that had to be renamed is listed in
`RENAMED`: a database that applied it under its old name has its record renamed (same
checksum) before anything else runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefn.cli import CommandError

if TYPE_CHECKING:
    import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "sql" / "migrations"
#: pg_advisory_xact_lock key shared by every runner ("edgefn" in ASCII)
LOCK_KEY = 0x6564_6765_666E
CONNECT_TIMEOUT_S = 10
#: old version -> new version, for files renamed after they shipped (bytes unchanged)
RENAMED = {
    # two files were numbered 0014; the second is the first's continuation
    "0014_push_reserve": "0014a_push_reserve",
}

_BOOTSTRAP_SQL = """
create table if not exists public.edgefn_migrations (
    version     text primary key,
    checksum    text not null,
    applied_at  timestamptz not null default now()
);
alter table public.edgefn_migrations enable row level security;
"""


class MigrationError(CommandError, RuntimeError):
    """The migrations cannot be applied as they are; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str  # the file name without ".sql", e.g. "0001_auth"
    path: Path
    sql: str
    checksum: str


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = Path(directory) if directory is not None else MIGRATIONS_DIR
    if not directory.is_dir():
        raise MigrationError(f"no migrations folder at {directory}")
    found = []
    numbers: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        number = path.stem.split("_", 1)[0]
        if number in numbers:
            raise MigrationError(
                f"migrations {numbers[number]} and {path.name} share the number {number}; give one a new number"
            )
        numbers[number] = path.name
        data = path.read_bytes()
        found.append(Migration(path.stem, path, data.decode("utf-8"), hashlib.sha256(data).hexdigest()))
    return found


def _connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    import psycopg

    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, prepare_threshold=None)
    except psycopg.ProgrammingError as exc:  # unparsable; its message may echo a password
        raise MigrationError("the database URL is not a valid Postgres connection string") from exc
    except psycopg.Error as exc:
        raise MigrationError(f"cannot connect to the database: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, str]:
    rows = conn.execute("select version, checksum from public.edgefn_migrations").fetchall()
    return {RENAMED.get(str(v), str(v)): str(c) for v, c in rows}


def _check(migrations: list[Migration], applied: dict[str, str]) -> list[Migration]:
    """Refuse edited, missing or out-of-order files; return the pending ones, in order."""
    by_version = {m.version: m for m in migrations}
    for version, checksum in sorted(applied.items()):
        m = by_version.get(version)
        if m is None:
            raise MigrationError(f"applied migration {version} is missing from the migrations folder")
        if m.checksum != checksum:
            raise MigrationError(
                f"applied migration {m.path.name} has changed since it was applied "
                "(checksum mismatch); add a new migration instead of editing it"
            )
    pending = [m for m in migrations if m.version not in applied]
    if pending and applied and pending[0].version < max(applied):
        raise MigrationError(
            f"migration {pending[0].path.name} sorts before the already applied {max(applied)}; "
            "give it a later number"
        )
    return pending


def _bootstrap(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(_BOOTSTRAP_SQL)
        for old, new in RENAMED.items():
            conn.execute(
                "update public.edgefn_migrations set version = %s where version = %s"
                " and not exists (select 1 from public.edgefn_migrations where version = %s)",
                (new, old, new),
            )


def pending_migrations(dsn: str, directory: Path | None = None) -> list[str]:
    """Versions not yet applied (refusing edited or missing ones, as apply would); changes
    nothing."""
    migrations = load_migrations(directory)
    with _connect(dsn) as conn:
        try:
            if conn.execute("select to_regclass('public.edgefn_migrations')").fetchone() == (None,):
                return [m.version for m in migrations]
            return [m.version for m in _check(migrations, _applied(conn))]
        except MigrationError:
            raise
        except Exception as exc:
            raise MigrationError(f"cannot read the migration record: {_first_line(exc)}") from exc


def apply_migrations(
    dsn: str, directory: Path | None = None, *, on_applied: Callable[[str], None] | None = None
) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the versions this
    call applied (empty when the database is up to date)."""
    import psycopg

    migrations = load_migrations(directory)
    done: list[str] = []
    with _connect(dsn) as conn:
        try:
            _bootstrap(conn)
            pending = _check(migrations, _applied(conn))
        except MigrationError:
            raise
        except psycopg.Error as exc:
            raise MigrationError(f"cannot read the migration record: {_first_line(exc)}") from exc
        for m in pending:
            try:
                with conn.transaction():
                    conn.execute("select pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                    # another runner may have got here first: look again under the lock
                    current = _applied(conn)
                    _check(migrations, current)
                    if m.version in current:
                        continue
                    conn.execute(m.sql.encode("utf-8"))
                    conn.execute(
                        "insert into public.edgefn_migrations (version, checksum) values (%s, %s)",
                        (m.version, m.checksum),
                    )
            except MigrationError:
                raise
            except psycopg.Error as exc:
                raise MigrationError(f"{m.path.name} failed: {_describe(exc)}") from exc
            done.append(m.version)
            if on_applied is not None:
                on_applied(m.version)
    return done


def _describe(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    message = _first_line(exc)
    if diag is not None and getattr(diag, "context", None):
        where = str(diag.context).strip().splitlines()[-1]
        return f"{message} ({where})"
    return message


# -- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help="Postgres DSN to migrate (default: the DATABASE_URL environment variable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the pending migrations, apply nothing")
    parser.add_argument("--directory", type=Path, default=None, help=argparse.SUPPRESS)


def database_url(args: argparse.Namespace) -> str:
    dsn = getattr(args, "database_url", None) or os.environ.get("DATABASE_URL", "")
    if not dsn.strip():
        raise CommandError("DATABASE_URL is not set (pass --database-url or set DATABASE_URL)")
    return dsn


def run(args: argparse.Namespace) -> int:
    dsn = database_url(args)
    if args.dry_run:
        pending = pending_migrations(dsn, args.directory)
        for version in pending:
            print(f"pending {version}")
        if not pending:
            print("up to date: nothing to apply")
        return 0
    applied = apply_migrations(dsn, args.directory, on_applied=lambda v: print(f"applied {v}", flush=True))
    if not applied:
        print("up to date: nothing to apply")
    return 0
