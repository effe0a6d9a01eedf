-- 0009: make the deck's filters usable by the planner under row level security.
--
-- The deck query runs AS THE USER, so Postgres adds the table's policy as a security
-- barrier: a condition of the query may be used as an index condition (or run before the
-- policy) only if its operators are LEAKPROOF. float8 comparisons are; cube's `@>` is not.
-- So under RLS the earthdistance GiST index of 0002 is never used and the cube expression
-- is computed for every candidate row (measured on 100,000 profiles: 300 ms, against 2 ms
-- for the latitude/longitude box below). From here on every database uses the same plain
-- box on (lat, lon) with a btree, whatever extensions it has. (The cube and earthdistance
-- extensions, where 0002 created them, are left installed.)

-- The box containing the circle; longitudes are not wrapped at the antimeridian.
create or replace function public.geo_within(
    lat double precision, lon double precision,
    center_lat double precision, center_lon double precision, radius_m double precision
) returns boolean
language sql immutable parallel safe
return lat between center_lat - radius_m / 111195.0 and center_lat + radius_m / 111195.0
    and lon between center_lon - radius_m / (111195.0 * greatest(cos(radians(center_lat)), 0.01))
                and center_lon + radius_m / (111195.0 * greatest(cos(radians(center_lat)), 0.01));

-- Replaces 0002's index of either kind. The INCLUDE columns (with the partial predicate)
-- make the usual deck filter (box + gender + birthdate, ordered by score) an index-only scan.
drop index if exists public.profiles_geo_idx;
create index profiles_geo_idx on public.profiles (lat, lon) include (gender, birthdate, score, id)
    where deleted_at is null and not hidden;
drop function if exists public.geo_point(double precision, double precision);

-- Embeddings: readable by any signed-in user, without a per-row subquery. The 0003 policy
-- (own row, or the profile is visible) made every ranked read hash all visible profiles
-- first. Visibility is the profiles table's business: the deck joins profiles, whose policy
-- hides hidden and deleted people. An embedding alone identifies nobody.
drop policy if exists profile_embeddings_select on public.profile_embeddings;
create policy profile_embeddings_select on public.profile_embeddings for select to authenticated
    using (true);
