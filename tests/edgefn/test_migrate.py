"""`edgefn migrate` against scratch databases made (and dropped) through the admin DSN."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest

from edgefn.cli import main
from edgefn.migrate import MIGRATIONS_DIR, MigrationError, apply_migrations, load_migrations
from tests.factories import scratch_database

ALL = [p.stem for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]


@pytest.fixture
def scratch_db(pg_admin_dsn: str) -> Iterator[Callable[[], str]]:
    """scratch_db() -> the DSN of a new empty database, dropped after the test."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(scratch_database(pg_admin_dsn, "edgefn_mig"))


def recorded(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("select version, checksum from public.edgefn_migrations").fetchall())


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, target)
    return target


def test_fresh_database_then_nothing_to_do(scratch_db: Callable[[], str]) -> None:
    dsn = scratch_db()
    assert apply_migrations(dsn) == ALL
    assert apply_migrations(dsn) == []
    assert recorded(dsn) == {m.version: m.checksum for m in load_migrations()}
    with psycopg.connect(dsn) as conn:
        tables = {r[0] for r in conn.execute("select tablename from pg_tables where schemaname = 'public'")}
        assert {"profiles", "purchases", "swipes", "matches", "outbox", "webhook_deliveries"} <= tables
        # every public table has row level security on
        no_rls = conn.execute(
            "select relname from pg_class where relnamespace = 'public'::regnamespace "
            "and relkind = 'r' and not relrowsecurity"
        ).fetchall()
        assert no_rls == []


def test_changed_or_missing_applied_file_is_refused(scratch_db: Callable[[], str], migrations_copy: Path) -> None:
    dsn = scratch_db()
    apply_migrations(dsn, migrations_copy)
    edited = migrations_copy / f"{ALL[1]}.sql"
    original = edited.read_text()
    edited.write_text(original + "\n-- an innocent looking edit\n")
    with pytest.raises(MigrationError, match=f"{ALL[1]}.sql has changed"):
        apply_migrations(dsn, migrations_copy)
    edited.write_text(original)
    (migrations_copy / f"{ALL[-1]}.sql").unlink()
    with pytest.raises(MigrationError, match=f"{ALL[-1]} is missing"):
        apply_migrations(dsn, migrations_copy)


def test_new_file_is_applied_and_out_of_order_file_refused(
    scratch_db: Callable[[], str], migrations_copy: Path
) -> None:
    dsn = scratch_db()
    apply_migrations(dsn, migrations_copy)
    (migrations_copy / "9000_extra.sql").write_text("create table public.extra (id int primary key);")
    assert apply_migrations(dsn, migrations_copy) == ["9000_extra"]
    (migrations_copy / "0001a_late.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match="sorts before"):
        apply_migrations(dsn, migrations_copy)


def test_failing_migration_rolls_back_alone(scratch_db: Callable[[], str], migrations_copy: Path) -> None:
    dsn = scratch_db()
    (migrations_copy / "9000_broken.sql").write_text(
        "create table public.half_done (id int);\nselect * from public.no_such_table;"
    )
    with pytest.raises(MigrationError, match=r"9000_broken\.sql failed: .*no_such_table"):
        apply_migrations(dsn, migrations_copy)
    assert set(recorded(dsn)) == set(ALL)  # the good ones stay applied
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select to_regclass('public.half_done')").fetchone() == (None,)


def test_concurrent_runs_apply_each_file_once(scratch_db: Callable[[], str]) -> None:
    dsn = scratch_db()
    start = threading.Barrier(3)
    results: list[list[str]] = []
    failures: list[BaseException] = []

    def runner() -> None:
        start.wait()
        try:
            results.append(apply_migrations(dsn))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    applied = [v for r in results for v in r]
    assert sorted(applied) == ALL  # every file exactly once, across all runners
    assert sorted(recorded(dsn)) == ALL


def test_runs_where_supabase_auth_already_exists(scratch_db: Callable[[], str]) -> None:
    """On Supabase the auth schema, its functions and the roles exist; ours must not
    replace them."""
    dsn = scratch_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            do $$ begin
                if not exists (select 1 from pg_roles where rolname = 'anon') then create role anon nologin; end if;
                if not exists (select 1 from pg_roles where rolname = 'authenticated') then create role authenticated nologin; end if;
                if not exists (select 1 from pg_roles where rolname = 'service_role') then create role service_role nologin bypassrls; end if;
            end $$;
            create schema auth;
            create table auth.users (
                instance_id uuid, id uuid primary key, aud varchar(255), role varchar(255),
                email varchar(255), encrypted_password varchar(255),
                raw_app_meta_data jsonb, raw_user_meta_data jsonb,
                created_at timestamptz, updated_at timestamptz, deleted_at timestamptz,
                is_anonymous boolean not null default false
            );
            create function auth.uid() returns uuid language sql stable as $f$
                select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid  -- supabase's
            $f$;
            create function auth.role() returns text language sql stable as $f$
                select nullif(current_setting('request.jwt.claim.role', true), '')::text  -- supabase's
            $f$;
            """
        )
    assert apply_migrations(dsn) == ALL
    with psycopg.connect(dsn) as conn:
        body = conn.execute("select prosrc from pg_proc where oid = 'auth.uid()'::regprocedure").fetchone()
        assert body is not None and "supabase's" in body[0]
        # the missing one was added
        assert conn.execute("select to_regprocedure('auth.jwt()') is not null").fetchone() == (True,)
        columns = conn.execute(
            "select count(*) from information_schema.columns where table_schema = 'auth' and table_name = 'users'"
        ).fetchone()
        assert columns == (12,)


def test_cli_applies_then_reports_up_to_date(
    scratch_db: Callable[[], str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = scratch_db()
    monkeypatch.setenv("DATABASE_URL", dsn)
    assert main(["migrate", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"pending {v}" for v in ALL]
    with psycopg.connect(dsn) as conn:  # a dry run changes nothing
        assert conn.execute("select to_regclass('public.edgefn_migrations')").fetchone() == (None,)
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"applied {v}" for v in ALL]
    assert main(["migrate", "--database-url", dsn]) == 0
    assert capsys.readouterr().out.splitlines() == ["up to date: nothing to apply"]


@pytest.mark.parametrize(
    "url, message",
    [
        (None, "DATABASE_URL is not set"),
        ("not a url at all", "not a valid Postgres connection string"),
        ("postgresql://postgres:hunter2@127.0.0.1:1/x?connect_timeout=2", "cannot connect to the database"),
    ],
)
def test_cli_bad_database_url_is_one_line(
    url: str | None, message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    argv = ["migrate"] + (["--database-url", url] if url else [])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert message in err
    assert "hunter2" not in err


def test_embedding_path_matches_the_server(database_url: str) -> None:
    """pgvector where the server has it (HNSW, cosine), the exact fallback where not."""
    with psycopg.connect(database_url) as conn:
        available = conn.execute("select exists (select 1 from pg_available_extensions where name = 'vector')")
        has_vector = available.fetchone() == (True,)
        assert conn.execute("select public.has_pgvector()").fetchone() == (has_vector,)
        index = conn.execute(
            "select indexdef from pg_indexes where indexname = 'profile_embeddings_hnsw_idx'"
        ).fetchone()
        if has_vector:
            assert index is not None and "hnsw" in index[0] and "vector_cosine_ops" in index[0]
        else:
            assert index is None


def test_migration_numbers_are_unique(migrations_copy: Path) -> None:
    numbers = [p.stem.split("_", 1)[0] for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]
    assert len(numbers) == len(set(numbers)), sorted(n for n in numbers if numbers.count(n) > 1)
    (migrations_copy / "0013_twin.sql").write_text("select 1;\n")
    with pytest.raises(MigrationError, match="share the number 0013"):
        load_migrations(migrations_copy)


def test_a_database_that_applied_a_renamed_file_keeps_its_record(scratch_db: Callable[[], str]) -> None:
    from edgefn.migrate import RENAMED

    dsn = scratch_db()
    apply_migrations(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:  # as recorded before the rename
        for old, new in RENAMED.items():
            conn.execute("update public.edgefn_migrations set version = %s where version = %s", (old, new))
    from edgefn.migrate import pending_migrations

    assert pending_migrations(dsn) == []
    assert apply_migrations(dsn) == []
    assert set(recorded(dsn)) == set(ALL)
