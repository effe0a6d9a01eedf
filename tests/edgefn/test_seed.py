"""`edgefn seed` with a small N against scratch databases (each migrated, then dropped)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from edgefn.cli import main
from edgefn.migrate import apply_migrations
from edgefn.seed import DEMO_USER_ID, SeedError, seed, seed_demo, user_id
from tests.factories import scratch_database

N = 300
ANCHOR = datetime(2025, 6, 15, 12, tzinfo=UTC)


@pytest.fixture
def fresh_db(pg_admin_dsn: str) -> Iterator[Callable[[], str]]:
    """fresh_db() -> the DSN of a new migrated database, dropped after the test."""
    with ExitStack() as stack:

        def make() -> str:
            dsn = stack.enter_context(scratch_database(pg_admin_dsn, "edgefn_seed"))
            apply_migrations(dsn)
            return dsn

        yield make


def one(dsn: str, query: str, *params: Any) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]


CHECKSUMS = {
    "auth.users": "id",
    "public.profiles": "id",
    "public.purchases": "id",
    "public.swipes": "swiper_id, target_id",
    "public.matches": "id",
    "public.goals": "id",
    "public.profile_embeddings": "user_id",
    "public.budgets": "user_id",
}


def checksums(dsn: str) -> dict[str, str]:
    return {
        table: one(dsn, f"select md5(string_agg(t::text, '|' order by {key})) from {table} t")
        for table, key in CHECKSUMS.items()
    }


def test_seed_counts_consistency_and_demo_user(fresh_db: Callable[[], str]) -> None:
    dsn = fresh_db()
    counts = seed(dsn, N, anchor=ANCHOR)
    assert counts["auth.users"] == counts["public.profiles"] == counts["public.user_tiers"] == N
    assert counts["public.artists"] == 200
    assert 15 * N <= counts["public.purchases"] <= 25 * N
    assert 12 * N <= counts["public.swipes"] <= 22 * N
    assert 0.8 * N <= counts["public.profile_embeddings"] < N
    assert counts["public.matches"] > 0 and counts["public.blocks"] > 0 and counts["public.goals"] > 0
    for table, expected in counts.items():
        assert one(dsn, f"select count(*) from {table}") == expected, table

    # matches are exactly the mutual likes
    mutual = one(
        dsn,
        "select count(*) from public.swipes s join public.swipes t "
        "on t.swiper_id = s.target_id and t.target_id = s.swiper_id "
        "where s.swiper_id < s.target_id and s.action <> 'pass' and t.action <> 'pass'",
    )
    assert mutual == counts["public.matches"]
    # purchases stay within the last ~13 months before the anchor
    span = one(dsn, "select extract(day from %s - min(purchased_at)) from public.purchases", ANCHOR)
    assert 380 <= span <= 400
    assert one(dsn, "select max(purchased_at) <= %s from public.purchases", ANCHOR)
    # a few currencies, kept per user
    assert one(dsn, "select max(n) from (select count(distinct currency) n from public.purchases group by user_id) x") <= 2

    demo = DEMO_USER_ID
    assert one(dsn, "select count(*) from public.purchases where user_id = %s", demo) >= 50
    assert one(dsn, "select count(distinct artist_id) from public.purchases where user_id = %s", demo) >= 5
    assert one(dsn, "select count(*) from public.purchases where user_id = %s and purchased_at > %s::timestamptz - interval '30 days'", demo, ANCHOR) >= 4  # noqa: E501
    assert one(dsn, "select monthly_limit from public.budgets where user_id = %s", demo) > 0
    assert one(dsn, "select count(*) from public.goals where user_id = %s and status = 'active'", demo) >= 1
    assert one(dsn, "select count(*) from public.profile_embeddings where user_id = %s", demo) == 1
    assert one(dsn, "select count(*) from public.matches where %s in (user_a, user_b)", demo) >= 1
    assert one(dsn, "select tier from public.user_tiers where user_id = %s", demo) == "paid"
    assert one(dsn, "select status from public.subscriptions where user_id = %s", demo) == "active"


def test_seed_is_deterministic_and_idempotent(fresh_db: Callable[[], str]) -> None:
    first, second = fresh_db(), fresh_db()
    counts = seed(first, N, anchor=ANCHOR)
    assert seed(second, N, anchor=ANCHOR) == counts
    assert checksums(first) == checksums(second)

    seeded_at = one(first, "select seeded_at from public.edgefn_seed")
    started = time.perf_counter()
    assert seed(first, N) == counts  # same N again: nothing happens
    assert time.perf_counter() - started < 2
    assert one(first, "select seeded_at from public.edgefn_seed") == seeded_at
    assert checksums(first) == checksums(second)


def test_other_n_needs_reset(fresh_db: Callable[[], str]) -> None:
    dsn = fresh_db()
    seed(dsn, N, anchor=ANCHOR)
    with pytest.raises(SeedError, match=f"already seeded with {N} users"):
        seed(dsn, 120, anchor=ANCHOR)
    counts = seed(dsn, 120, reset=True, anchor=ANCHOR)
    assert counts["auth.users"] == 120
    assert one(dsn, "select count(*) from auth.users") == 120
    assert one(dsn, "select count(*) from public.swipes") == counts["public.swipes"]
    assert one(dsn, "select users from public.edgefn_seed") == 120
    assert one(dsn, "select count(*) from auth.users where id = %s", user_id(121)) == 0


def test_refuses_unknown_users_and_unmigrated_databases(fresh_db: Callable[[], str], pg_admin_dsn: str) -> None:
    dsn = fresh_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into auth.users (id) values (gen_random_uuid())")
    with pytest.raises(SeedError, match="did not create"):
        seed(dsn, 10)
    seed_demo(dsn)  # the dev server's call leaves a database with its own users alone
    assert one(dsn, "select count(*) from auth.users") == 1
    with scratch_database(pg_admin_dsn, "edgefn_seed") as empty:
        with pytest.raises(SeedError, match="not migrated"):
            seed(empty, 10)


def test_seed_demo_then_no_op(fresh_db: Callable[[], str]) -> None:
    dsn = fresh_db()
    seed_demo(dsn)
    assert one(dsn, "select users from public.edgefn_seed") == 2000
    started = time.perf_counter()
    seed_demo(dsn)
    assert time.perf_counter() - started < 1


def test_cli(fresh_db: Callable[[], str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = fresh_db()
    monkeypatch.setenv("DATABASE_URL", dsn)
    assert main(["seed", "--users", "50"]) == 0
    out = capsys.readouterr().out
    assert "public.purchases:" in out and "seeded 50 users" in out
    assert main(["seed", "--users", "50"]) == 0
    assert capsys.readouterr().out.strip() == "already seeded with 50 users: nothing to do"
    assert main(["seed", "--users", "60"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--reset" in err
    monkeypatch.delenv("DATABASE_URL")
    assert main(["seed", "--users", "50"]) == 1
    assert "DATABASE_URL is not set" in capsys.readouterr().err


def indexes(dsn: str) -> set[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select tablename, indexdef from pg_indexes where schemaname in ('public', 'auth')"
        ).fetchall()
    return {(t, d) for t, d in rows}


def test_indexes_are_built_after_the_load_and_end_up_as_the_migrations_made_them(
    fresh_db: Callable[[], str],
) -> None:
    dsn = fresh_db()
    before = indexes(dsn)
    assert any("purchases_user_time_idx" in d for _, d in before)
    said: list[str] = []
    seed(dsn, N, anchor=ANCHOR, log=said.append)
    assert indexes(dsn) == before
    built = next(line for line in said if line.startswith("indexes: "))
    assert int(built.split()[1]) >= 10  # the secondary indexes were deferred, not kept
    # the planner can use them at once: one user's purchases by the dashboard's index
    with psycopg.connect(dsn) as conn:
        plan = conn.execute(
            "explain select amount from public.purchases where user_id = %s order by purchased_at desc limit 10",
            (DEMO_USER_ID,),
        ).fetchall()
    assert "purchases_user_time_idx" in " ".join(r[0] for r in plan)


def test_a_failed_load_leaves_every_index_in_place(fresh_db: Callable[[], str], monkeypatch: pytest.MonkeyPatch) -> None:
    import edgefn.seed as seeding

    dsn = fresh_db()
    before = indexes(dsn)

    def broken(plan: Any, out: Any) -> Any:
        yield "not\ta\tvalid\tswipe\n"

    monkeypatch.setattr(seeding, "_swipes", broken)
    with pytest.raises(SeedError):
        seed(dsn, N, anchor=ANCHOR)
    assert indexes(dsn) == before
    assert one(dsn, "select count(*) from public.profiles") == 0


@pytest.mark.parametrize("anchor", [
    datetime(2028, 2, 29, 23, tzinfo=UTC),  # a leap day: birthdays and "a year ago" bite here
    datetime(2027, 3, 31, 0, tzinfo=UTC),  # a month end whose previous month is shorter
    datetime(2027, 1, 1, 0, tzinfo=UTC),  # the first hour of a year
])
def test_seed_on_awkward_anchors(fresh_db: Callable[[], str], anchor: datetime) -> None:
    dsn = fresh_db()
    counts = seed(dsn, 60, anchor=anchor)
    assert counts["auth.users"] == 60
    assert one(dsn, "select max(purchased_at) <= %s from public.purchases", anchor)
    # adults only, whatever the day: ages are counted by the calendar from the anchor
    youngest = one(dsn, "select max(birthdate) from public.profiles")
    assert youngest <= anchor.date().replace(year=anchor.year - 18, day=28 if anchor.month == 2 else anchor.day)
    demo_recent = "select count(*) from public.purchases where user_id = %s and purchased_at > %s::timestamptz - interval '30 days'"
    assert one(dsn, demo_recent, DEMO_USER_ID, anchor) >= 4
