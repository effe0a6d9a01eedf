-- 0001: a minimal stand-in for Supabase's `auth` schema and API roles.
--
-- Everything here is created ONLY WHERE ABSENT, so the same file runs on a bare Postgres
-- (local, CI) and on Supabase, where the schema, `auth.uid()` and the roles already exist
-- and are left untouched. `gen_random_uuid()` is built in since PostgreSQL 13: no pgcrypto.
--
-- Identity is read exactly as PostgREST/Supabase publish it, from transaction-local settings:
--   request.jwt.claims     the whole JWT payload as JSON (PostgREST >= 9)
--   request.jwt.claim.sub  the subject alone (older PostgREST; shared/db.py sets both)

create schema if not exists auth;

create table if not exists auth.users (
    id                  uuid primary key,
    email               text,
    created_at          timestamptz not null default now(),
    raw_app_meta_data   jsonb not null default '{}'::jsonb,
    deleted_at          timestamptz
);

do $$
begin
    -- API roles (NOLOGIN: they are only ever entered with SET ROLE)
    if not exists (select 1 from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;

    -- `set local role authenticated` (what shared/db.py does) needs membership for a
    -- non-superuser; grant only what is missing (Supabase's postgres already has them).
    if not pg_has_role(current_user, 'anon', 'MEMBER') then
        execute format('grant anon to %I', current_user);
    end if;
    if not pg_has_role(current_user, 'authenticated', 'MEMBER') then
        execute format('grant authenticated to %I', current_user);
    end if;
    if not pg_has_role(current_user, 'service_role', 'MEMBER') then
        execute format('grant service_role to %I', current_user);
    end if;

    -- auth.uid(): the caller's user id, or null (no claims, empty sub: service work)
    if to_regprocedure('auth.uid()') is null then
        create function auth.uid() returns uuid
        language sql stable
        as $fn$
            select coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
            )::uuid
        $fn$;
    end if;

    if to_regprocedure('auth.role()') is null then
        create function auth.role() returns text
        language sql stable
        as $fn$
            select coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
            )::text
        $fn$;
    end if;

    if to_regprocedure('auth.jwt()') is null then
        create function auth.jwt() returns jsonb
        language sql stable
        as $fn$
            select coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb
        $fn$;
    end if;
end
$$;

grant usage on schema auth to anon, authenticated, service_role;
grant execute on function auth.uid(), auth.role(), auth.jwt() to anon, authenticated, service_role;
