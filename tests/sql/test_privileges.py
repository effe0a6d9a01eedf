"""The privilege snapshot: what `anon` and `authenticated` hold in the database equals the
checked-in allow-list (tests/sql/privileges.toml), both on this run's database and on one
migrated under Supabase's default privileges (which hand every new table, sequence and
function of `public` to the API roles), and a widening fails."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from edgefn.migrate import apply_migrations
from tests.factories import scratch_database
from tests.sql.privileges import AllowList, differences, snapshot

#: what Supabase's platform sets up for `public` before any migration runs
SUPABASE_DEFAULTS = """
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;
"""


@pytest.fixture(scope="module")
def allow() -> AllowList:
    return AllowList.load()


@pytest.fixture(scope="module")
def supabase_like(pg_admin_dsn: str, database_url: str) -> Iterator[str]:
    """A database migrated from scratch under Supabase's default privileges. (database_url
    first: the cluster's API roles exist once a database is migrated.)"""
    with scratch_database(pg_admin_dsn, "edgefn_supabase_like") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SUPABASE_DEFAULTS)
        apply_migrations(dsn)
        yield dsn


async def problems_in(dsn: str, allow: AllowList) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return differences(await snapshot(conn), allow)


async def test_every_entry_gives_its_reason(allow: AllowList) -> None:
    # AllowList.load() refuses an entry without one; and the list is not empty
    assert allow.grants and allow.policies and allow.owners


async def test_this_runs_database_matches_the_allow_list(database_url: str, allow: AllowList) -> None:
    problems = await problems_in(database_url, allow)
    assert not problems, "\n\n".join(problems)


async def test_under_supabase_default_privileges_too(supabase_like: str, allow: AllowList) -> None:
    problems = await problems_in(supabase_like, allow)
    assert not problems, "\n\n".join(problems)


@pytest.mark.parametrize(
    ("widening", "named"),
    [
        ("grant update on public.profiles to authenticated", "table public.profiles"),
        ("grant update (score) on public.profiles to authenticated", "column public.profiles.score"),
        ("grant execute on function public.apply_swipes(uuid[], text[], integer, text, text, integer, integer) "
         "to authenticated", "function public.apply_swipes"),
        ("grant usage on sequence public.outbox_id_seq to anon", "sequence public.outbox_id_seq"),
        ("grant select on public.outbox to anon", "table public.outbox"),
        ("create view public.everyone as select id, lat, lon from public.profiles;"
         " grant select on public.everyone to authenticated", "view public.everyone"),
        ("drop policy profiles_select on public.profiles;"
         " create policy profiles_select on public.profiles for select to authenticated using (true)",
         "profiles_select"),
        ("alter table public.goals disable row level security", "public.goals"),
        ("alter default privileges in schema public grant select on tables to anon", "default r in public"),
    ],
)
async def test_a_widening_fails_until_the_list_changes(
    supabase_like: str, allow: AllowList, widening: str, named: str
) -> None:
    async with await psycopg.AsyncConnection.connect(supabase_like) as conn:
        await conn.execute(widening)
        problems = differences(await snapshot(conn), allow)
        await conn.rollback()
    assert problems and named in "\n".join(problems)


async def test_objects_created_later_start_closed(supabase_like: str, allow: AllowList) -> None:
    """0017's default privileges: a later migration's new table, sequence or function gives
    the API roles nothing until it grants something (and the allow-list says why)."""
    async with await psycopg.AsyncConnection.connect(supabase_like) as conn:
        await conn.execute(
            "create table public.later (id bigserial primary key, secret text);"
            " create function public.later_fn() returns int language sql return 1;"
            " create function public.later_definer() returns int language sql security definer return 1"
        )
        problems = differences(await snapshot(conn), allow)
        await conn.rollback()
    # the table has no row level security: that alone is reported, nothing was granted
    assert len(problems) == 1 and "public.later" in problems[0] and "row level security" in problems[0]
