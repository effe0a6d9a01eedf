-- 0002: profiles (one per auth user: dating fields and spending settings), user tiers, and
-- the geo helpers the candidate query uses.
--
-- Conventions for every table in this schema:
--   * row level security is enabled on every table; user-owned rows carry the policy
--     `(select auth.uid()) = <owner>` (the sub-select makes Postgres evaluate it once per
--     statement instead of once per row);
--   * privileges are revoked first and granted explicitly, because Supabase's default
--     privileges grant ALL on new public tables to anon and authenticated;
--   * service_role (BYPASSRLS) gets everything; it is what webhooks and the orchestrator use.

grant usage on schema public to anon, authenticated, service_role;

-- updated_at maintenance for tables that have it
create or replace function public.touch_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.updated_at := pg_catalog.now();
    return new;
end
$$;

create table if not exists public.profiles (
    id              uuid primary key references auth.users (id) on delete cascade,
    display_name    text check (char_length(display_name) <= 80),
    bio             text check (char_length(bio) <= 2000),
    gender          text check (gender in ('man', 'woman', 'nonbinary')),
    birthdate       date check (birthdate > date '1900-01-01'),
    -- the genders this person wants to see in their deck
    interested_in   text[] not null default '{}'
                    check (interested_in <@ array['man', 'woman', 'nonbinary']::text[]),
    pref_min_age    smallint not null default 18 check (pref_min_age >= 18),
    pref_max_age    smallint not null default 99 check (pref_max_age <= 120),
    lat             double precision check (lat between -90 and 90),
    lon             double precision check (lon between -180 and 180),
    -- profile quality score, higher is better (ranking tie-breaker)
    score           real not null default 0,
    photos          jsonb not null default '[]'::jsonb,
    hidden          boolean not null default false,
    deleted_at      timestamptz,
    last_active_at  timestamptz,
    monthly_budget  numeric(12, 2) check (monthly_budget >= 0),
    currency        char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    timezone        text not null default 'UTC',
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint profiles_age_range check (pref_min_age <= pref_max_age),
    constraint profiles_location_pair check ((lat is null) = (lon is null))
);

drop trigger if exists profiles_touch on public.profiles;
create trigger profiles_touch before update on public.profiles
    for each row execute function public.touch_updated_at();

-- Candidate query: visible profiles filtered by gender and birthdate (age), then location,
-- ordered by score. The INCLUDE columns let the filter on location and the sort key be
-- read from the index without visiting rows that the location filter throws away.
create index if not exists profiles_deck_idx on public.profiles (gender, birthdate)
    include (score, lat, lon)
    where deleted_at is null and not hidden;
create index if not exists profiles_score_idx on public.profiles (score desc)
    where deleted_at is null and not hidden;

-- Geo helpers. `public.geo_within(lat, lon, center_lat, center_lon, radius_m)` is a cheap,
-- index-friendly pre-filter (a box that contains the circle); `public.geo_distance_m` is
-- the exact great-circle distance. Both are SQL functions the planner inlines, so the
-- index below is used on either path:
--   * with the `cube` + `earthdistance` contrib extensions (the machine's PG15, Supabase):
--     a GiST index on the point on the earth's surface, and a box query against it;
--   * without them (the embedded PG16 ships neither): a latitude/longitude box against a
--     btree on (lat, lon).
-- The bodies use SQL-standard `return` syntax, so names are resolved when the function is
-- created, never through the caller's search_path (which the earthdistance functions
-- themselves depend on: an index on `ll_to_earth(...)` breaks autovacuum and restores).
create or replace function public.geo_distance_m(
    lat1 double precision, lon1 double precision, lat2 double precision, lon2 double precision
) returns double precision
language sql immutable parallel safe
return 2 * 6371008.8 * asin(least(1.0, sqrt(
    power(sin(radians(lat2 - lat1) / 2), 2)
    + cos(radians(lat1)) * cos(radians(lat2)) * power(sin(radians(lon2 - lon1) / 2), 2)
)));

do $$
declare
    ext_schema text;
begin
    if (select count(*) from pg_available_extensions where name in ('cube', 'earthdistance')) = 2 then
        create extension if not exists cube;
        create extension if not exists earthdistance;
        select n.nspname into ext_schema
            from pg_extension e join pg_namespace n on n.oid = e.extnamespace
            where e.extname = 'cube';

        -- the same expression as earthdistance's ll_to_earth(), with every name qualified
        execute format($f$
            create or replace function public.geo_point(lat double precision, lon double precision)
            returns %1$I.cube
            language sql immutable parallel safe
            return %1$I.cube(%1$I.cube(%1$I.cube(
                6378168::float8 * cos(radians(lat)) * cos(radians(lon))),
                6378168::float8 * cos(radians(lat)) * sin(radians(lon))),
                6378168::float8 * sin(radians(lat)))
        $f$, ext_schema);

        -- chord <= arc, so enlarging by the arc length gives a box containing the circle
        execute format($f$
            create or replace function public.geo_within(
                lat double precision, lon double precision,
                center_lat double precision, center_lon double precision, radius_m double precision
            ) returns boolean
            language sql immutable parallel safe
            return %1$I.cube_enlarge(public.geo_point(center_lat, center_lon), radius_m, 3)
                operator(%1$I.@>) public.geo_point(lat, lon)
        $f$, ext_schema);

        create index if not exists profiles_geo_idx on public.profiles
            using gist (public.geo_point(lat, lon))
            where deleted_at is null and not hidden;
    else
        create or replace function public.geo_within(
            lat double precision, lon double precision,
            center_lat double precision, center_lon double precision, radius_m double precision
        ) returns boolean
        language sql immutable parallel safe
        return lat between center_lat - radius_m / 111195.0 and center_lat + radius_m / 111195.0
            and lon between center_lon - radius_m / (111195.0 * greatest(cos(radians(center_lat)), 0.01))
                        and center_lon + radius_m / (111195.0 * greatest(cos(radians(center_lat)), 0.01));

        create index if not exists profiles_geo_idx on public.profiles (lat, lon)
            where deleted_at is null and not hidden;
    end if;
end
$$;

alter table public.profiles enable row level security;

-- Own profile only. A profile row holds what nobody else may read (birthdate, exact
-- coordinates, monthly budget); other people are seen through public.deck() (0011), which
-- returns card columns only and applies blocks, visibility and both sides' preferences.
drop policy if exists profiles_select on public.profiles;
create policy profiles_select on public.profiles for select to authenticated
    using (id = (select auth.uid()));
drop policy if exists profiles_insert on public.profiles;
create policy profiles_insert on public.profiles for insert to authenticated
    with check (id = (select auth.uid()));
drop policy if exists profiles_update on public.profiles;
create policy profiles_update on public.profiles for update to authenticated
    using (id = (select auth.uid())) with check (id = (select auth.uid()));
drop policy if exists profiles_delete on public.profiles;
create policy profiles_delete on public.profiles for delete to authenticated
    using (id = (select auth.uid()));

revoke all on public.profiles from anon, authenticated;
grant select, insert, update, delete on public.profiles to authenticated;
grant all on public.profiles to service_role;

-- The rate limiter's fallback when Redis has no tier for a user. Written by the service
-- (webhooks, admin); a user may read their own.
create table if not exists public.user_tiers (
    user_id     uuid primary key references auth.users (id) on delete cascade,
    tier        text not null default 'free' check (tier in ('free', 'paid', 'admin')),
    source      text not null default 'default',
    updated_at  timestamptz not null default now()
);

drop trigger if exists user_tiers_touch on public.user_tiers;
create trigger user_tiers_touch before update on public.user_tiers
    for each row execute function public.touch_updated_at();

alter table public.user_tiers enable row level security;
drop policy if exists user_tiers_select_own on public.user_tiers;
create policy user_tiers_select_own on public.user_tiers for select to authenticated
    using (user_id = (select auth.uid()));

revoke all on public.user_tiers from anon, authenticated;
grant select on public.user_tiers to authenticated;
grant all on public.user_tiers to service_role;

grant execute on function public.geo_distance_m(double precision, double precision, double precision, double precision)
    to anon, authenticated, service_role;
grant execute on function public.geo_within(double precision, double precision, double precision, double precision, double precision)
    to anon, authenticated, service_role;
