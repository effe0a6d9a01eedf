-- 0017b: location privacy, and decks re-checked on every read.
--
-- Before this file the deck compared exact coordinates: bisecting max_distance_km gave
-- another user's distance to the metre, and three vantage points (users may move
-- themselves) located a person to within a metre in 56 calls. Now:
--
--   * Cells. Every position is snapped to a cell of a fixed grid, about 3 km on a side: rows
--     of 180/6671 degrees of latitude (3.0 km), each cut into as many equal columns as fit
--     3 km at the row's middle latitude (so cells stay about square up to the poles). Every
--     comparison with anybody else, on both sides, uses the centre of the cell: the filter,
--     the distance shown, and the caller's own position in their deck. Two positions in one
--     cell give the same answer to every query, so no sequence of queries (moving oneself
--     across cell edges included) learns more than the cell; and any position has another
--     in its cell at least 2.1 km away (half the diagonal), so whatever a caller concludes
--     is at least 1 km off for one of the two. The owner still reads their exact lat/lon.
--   * Published cell, rate limited. profiles.cell_lat/cell_lon (server-owned) is the cell
--     others are compared with. A trigger derives it from lat/lon; it moves at most once per
--     15 minutes per user (profile_cell_moves remembers the last move, also across deleting
--     and re-creating the profile). A move asked for sooner changes the exact position at
--     once and the published cell with the first location write after the cooldown.
--   * Distance steps. A card's distance is the cell-to-cell distance rounded UP to a step
--     (5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200 km, then every 100 km), and
--     max_distance_km is rounded DOWN to a step (at least 5 km) before filtering, so a card
--     never says more than its step, and bisecting the radius finds only the step.
--   * Re-checked decks. deck() also returns a digest of what decides the caller's
--     candidate set (their published cell, gender, birthdate, preferences, the filters, the
--     date, and blocks in either direction). Given the ids and digest of a cached page, it
--     re-applies every filter to those ids alone (a primary-key lookup each) and returns the
--     cards still eligible, in their cached order; when the digest differs, or none is
--     left, it computes the page anew. So a cached page never shows someone who has since
--     blocked the caller or been blocked, hidden or deleted their profile, moved out of
--     range or changed preferences, or been swiped or matched: through whichever door the
--     change came (the REST API included), with no invalidation to miss.

-- -- the grid --------------------------------------------------------------------------------

-- The centre of a position's cell. 6671 rows of 180/6671 degrees (111.195 km per degree, as
-- in geo_within: 3.0003 km); a row is cut into floor(its middle circumference / 3 km) equal
-- columns. Pure functions of the arguments: the same position always gives the same cell.
create or replace function public.geo_cell_lat(lat double precision) returns double precision
language sql immutable parallel safe
return -90.0 + (least(floor((lat + 90.0) / (180.0 / 6671)), 6670) + 0.5) * (180.0 / 6671);

create or replace function public.geo_cell_lon(lat double precision, lon double precision) returns double precision
language sql immutable parallel safe
return (
    select -180.0 + ((floor((lon + 180.0) / (360.0 / g.n))::bigint % g.n) + 0.5) * (360.0 / g.n)
    from (select greatest(1, floor(360.0 * 111.195 * cos(radians(public.geo_cell_lat(lat))) / 3.0))::bigint as n) g
);

-- The distance steps a card shows and a radius is rounded to (km).
create or replace function public.geo_distance_steps_km() returns integer[]
language sql immutable parallel safe
return array[5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200];

-- A distance in metres, rounded up to its step (km).
create or replace function public.geo_distance_step_km(distance_m double precision) returns integer
language sql immutable strict parallel safe
return case
    when distance_m > 200000.0 then (ceil(distance_m / 100000.0) * 100)::integer
    else (select min(s) from unnest(public.geo_distance_steps_km()) s where s * 1000.0 >= distance_m)
end;

-- A radius asked for, rounded down to a step (km), at least the first one: the filter
-- keeps d <= step(r), exactly the cards whose shown distance is at most r. (No radius, no
-- filter: null stays null.)
create or replace function public.geo_radius_step_km(max_distance_km double precision) returns double precision
language sql immutable strict parallel safe
return case
    when max_distance_km > 200 then floor(max_distance_km / 100.0) * 100.0
    else coalesce((select max(s) from unnest(public.geo_distance_steps_km()) s where s <= max_distance_km), 5)
end;

grant execute on function public.geo_cell_lat(double precision), public.geo_cell_lon(double precision, double precision),
    public.geo_distance_steps_km(), public.geo_distance_step_km(double precision),
    public.geo_radius_step_km(double precision)
    to service_role;

-- -- the published cell -------------------------------------------------------------------------

alter table public.profiles add column if not exists cell_lat double precision;
alter table public.profiles add column if not exists cell_lon double precision;

-- The last time each user's published cell moved. Keyed by the auth user, not the profile,
-- so deleting and re-creating a profile does not start a new cooldown. Service only.
create table if not exists public.profile_cell_moves (
    user_id   uuid primary key references auth.users (id) on delete cascade,
    moved_at  timestamptz not null
);
alter table public.profile_cell_moves enable row level security;
revoke all on public.profile_cell_moves from anon, authenticated;
grant all on public.profile_cell_moves to service_role;

-- BEFORE INSERT OR UPDATE OF lat, lon: derive the published cell. SECURITY DEFINER: a
-- user's own update runs it, and the user may neither read nor write the ledger.
create or replace function public.profiles_publish_cell() returns trigger
language plpgsql security definer
set search_path = ''
as $$
declare
    c_lat      double precision;
    c_lon      double precision;
    last_move  timestamptz;
begin
    if new.lat is null or new.lon is null then
        -- no position: nothing to compare with (the cooldown keeps counting from the last move)
        new.cell_lat := null;
        new.cell_lon := null;
        return new;
    end if;
    c_lat := public.geo_cell_lat(new.lat);
    c_lon := public.geo_cell_lon(new.lat, new.lon);
    if tg_op = 'UPDATE' and c_lat = old.cell_lat and c_lon = old.cell_lon then
        new.cell_lat := old.cell_lat;
        new.cell_lon := old.cell_lon;
        return new;  -- the same cell: nothing moves, nothing is recorded
    end if;
    select m.moved_at into last_move from public.profile_cell_moves m where m.user_id = new.id for update;
    if last_move is not null and pg_catalog.now() < last_move + interval '15 minutes' then
        -- too soon: others keep seeing the cell they saw (none, for a re-created profile)
        new.cell_lat := case when tg_op = 'UPDATE' then old.cell_lat end;
        new.cell_lon := case when tg_op = 'UPDATE' then old.cell_lon end;
        return new;
    end if;
    insert into public.profile_cell_moves as m (user_id, moved_at) values (new.id, pg_catalog.now())
    on conflict (user_id) do update set moved_at = excluded.moved_at;
    new.cell_lat := c_lat;
    new.cell_lon := c_lon;
    return new;
end
$$;
revoke all on function public.profiles_publish_cell() from public, anon, authenticated;

drop trigger if exists profiles_publish_cell on public.profiles;
create trigger profiles_publish_cell before insert or update of lat, lon on public.profiles
    for each row execute function public.profiles_publish_cell();
-- ALWAYS: bulk loads (edgefn seed, session_replication_role = replica) get cells too
alter table public.profiles enable always trigger profiles_publish_cell;

-- -- the candidate table holds cells, never positions ------------------------------------------

alter table public.deck_profiles rename column lat to cell_lat;
alter table public.deck_profiles rename column lon to cell_lon;

create or replace function public.deck_profiles_from_profiles() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
    delete from public.deck_profiles d
     using changed_rows c
     where d.id = c.id and (c.deleted_at is not null or c.hidden);
    insert into public.deck_profiles as d (id, gender, birthdate, interested_in, pref_min_age, pref_max_age,
                                           cell_lat, cell_lon, score, last_active_at, embedding)
    select c.id, c.gender, c.birthdate, c.interested_in, c.pref_min_age, c.pref_max_age, c.cell_lat, c.cell_lon,
           c.score, c.last_active_at, e.embedding
      from changed_rows c
      left join public.profile_embeddings e on e.user_id = c.id
     where c.deleted_at is null and not c.hidden
    on conflict (id) do update set
        gender = excluded.gender, birthdate = excluded.birthdate, interested_in = excluded.interested_in,
        pref_min_age = excluded.pref_min_age, pref_max_age = excluded.pref_max_age, cell_lat = excluded.cell_lat,
        cell_lon = excluded.cell_lon, score = excluded.score, last_active_at = excluded.last_active_at
        -- (not the embedding: that is the other trigger's, and a concurrent embedding update
        -- must not be overwritten with the value this statement read)
    where (d.gender, d.birthdate, d.interested_in, d.pref_min_age, d.pref_max_age, d.cell_lat, d.cell_lon, d.score,
           d.last_active_at)
          is distinct from
          (excluded.gender, excluded.birthdate, excluded.interested_in, excluded.pref_min_age, excluded.pref_max_age,
           excluded.cell_lat, excluded.cell_lon, excluded.score, excluded.last_active_at);
    return null;
end
$$;

-- Cells for the profiles that exist: not a move (nothing recorded, so nobody waits a
-- cooldown), and not an edit of the profile (updated_at stays). The deck_profiles trigger
-- above copies the cells over the old coordinates.
alter table public.profiles disable trigger profiles_touch;
update public.profiles
   set cell_lat = public.geo_cell_lat(lat), cell_lon = public.geo_cell_lon(lat, lon)
 where lat is not null and lon is not null;
alter table public.profiles enable trigger profiles_touch;
-- (and rows whose profile had no position keep none)
update public.deck_profiles d set cell_lat = null, cell_lon = null
  from public.profiles p
 where p.id = d.id and p.cell_lat is null and d.cell_lat is not null;

-- -- the deck ------------------------------------------------------------------------------------

drop function if exists public.deck(integer, text[], integer, integer, double precision, text, integer,
    double precision, uuid, timestamptz, double precision[], double precision, integer, integer, double precision);

-- public.deck: the caller's next `p_limit` candidates, best first, as card rows; 0011 has the
-- ranking and strategies, unchanged. What changed:
--
--   * positions are published cells (see the top of this file), the caller's included;
--     distance_km is the cell-to-cell distance rounded up to a step; p_max_distance_km is
--     rounded down to a step before filtering;
--   * every row carries `digest`: what decides the caller's candidate set, hashed;
--   * p_recheck_ids / p_recheck_digest: a cached page's ids and the digest it was computed
--     with. When the digest is still the caller's, the rows are those ids that pass every
--     filter now (strategy 'recheck', rank and tier null), in the given order; when it is
--     not, or none passes, the page is computed anew from the other arguments.
--
-- SECURITY DEFINER, executable by the service role only (0017): the recommendations
-- function calls it for the verified caller, behind its rate limit.
create function public.deck(
    p_limit            integer,
    p_genders          text[] default null,
    p_min_age          integer default null,
    p_max_age          integer default null,
    p_max_distance_km  double precision default null,
    p_strategy         text default 'auto',
    p_after_tier       integer default null,
    p_after_rank       double precision default null,
    p_after_id         uuid default null,
    p_as_of            timestamptz default null,
    p_weights          double precision[] default '{0.6,0.3,0.1}',
    p_recency_days     double precision default 30,
    p_pool             integer default 400,
    p_exact_max        integer default 4000,
    p_exact_radius_km  double precision default 100,
    p_recheck_ids      uuid[] default null,
    p_recheck_digest   text default null
) returns table (
    id           uuid,
    display_name text,
    age          integer,
    distance_km  integer,
    bio          text,
    photos       jsonb,
    rank         double precision,
    tier         integer,
    strategy     text,
    digest       text
)
language plpgsql volatile security definer
set search_path = ''
as $fn$
declare
    uid        uuid := auth.uid();
    my_gender  text;
    my_birth   date;
    my_wants   text[];
    my_min     integer;
    my_max     integer;
    my_lat     double precision;
    my_lon     double precision;
    my_arr     real[];
    my_vec     text;
    my_age     integer;
    my_digest  text;
    genders    text[];
    lo_age     integer;
    hi_age     integer;
    born_after date;
    born_upto  date;
    radius_m   double precision;
    has_vec    boolean := public.has_pgvector();
    vs         text;
    strat      text := coalesce(p_strategy, 'auto');
    as_of      timestamptz := coalesce(p_as_of, pg_catalog.now());
    lim        integer := least(greatest(coalesce(p_limit, 20), 1), 101);
    -- the tuning arguments are the function's (the edge function passes its settings); a
    -- client calling the RPC directly gets them bounded
    pool_n     integer := least(greatest(coalesce(p_pool, 400), 40), 1000);
    exact_max  integer := least(greatest(coalesce(p_exact_max, 4000), 1), 20000);
    weights    double precision[] := array[coalesce(p_weights[1], 0.6), coalesce(p_weights[2], 0.3),
                                           coalesce(p_weights[3], 0.1)];
    window_s   double precision := greatest(coalesce(p_recency_days, 30), 0.01) * 86400.0;
    filters    text;
    sim        text;
    q          text;
    pool_src   text;
    rest_src   text;
    card_cols  text;
    page_tail  text;
    keyset     text;
    excluded   uuid[];
    sql        text;
    line       text;
    stage      integer;
    explain    boolean;
    n_found    integer;
    got        integer;
begin
    if uid is null then
        raise exception 'deck: the transaction has no user' using errcode = '42501';
    end if;
    if strat not in ('auto', 'hnsw', 'vector_exact', 'exact', 'score') then
        raise exception 'deck: unknown strategy %', strat using errcode = '22023';
    end if;

    select p.gender, p.birthdate, p.interested_in, p.pref_min_age, p.pref_max_age, p.cell_lat, p.cell_lon, e.embedding
      into my_gender, my_birth, my_wants, my_min, my_max, my_lat, my_lon, my_arr
      from public.profiles p
      left join public.profile_embeddings e on e.user_id = p.id
     where p.id = uid and p.deleted_at is null;
    if not found then
        raise exception 'deck: the caller has no profile' using errcode = 'UE404';
    end if;
    if p_max_distance_km is not null and my_lat is null then
        raise exception 'deck: a distance filter needs the caller''s location' using errcode = 'UE422';
    end if;

    if has_vec then
        select n.nspname into vs
          from pg_catalog.pg_extension x join pg_catalog.pg_namespace n on n.oid = x.extnamespace
         where x.extname = 'vector';
        execute 'select embedding_v::text from public.profile_embeddings where user_id = $1' into my_vec using uid;
    end if;

    my_age := extract(year from pg_catalog.age(current_date, my_birth))::integer;
    genders := coalesce(p_genders, nullif(my_wants, '{}'::text[]));
    lo_age := coalesce(p_min_age, my_min);
    hi_age := coalesce(p_max_age, my_max);
    born_upto := (current_date - pg_catalog.make_interval(years => lo_age))::date;
    born_after := (current_date - pg_catalog.make_interval(years => hi_age + 1))::date;
    radius_m := public.geo_radius_step_km(p_max_distance_km) * 1000.0;

    -- Everything that decides which people may be in the caller's deck, other than each
    -- candidate's own row (re-checked one by one): a change to any of it invalidates a
    -- cached page. Blocks in either direction are here because an unblock brings someone
    -- back, which re-checking the cached ids cannot.
    my_digest := pg_catalog.md5(pg_catalog.concat_ws('|', my_gender, my_birth, my_wants::text, my_min, my_max,
        my_lat, my_lon, genders::text, lo_age, hi_age, radius_m, current_date,
        (select pg_catalog.string_agg(b.x::text, ',' order by b.x)
           from (select bl.blocked_id from public.blocks bl where bl.blocker_id = uid
                 union select bl.blocker_id from public.blocks bl where bl.blocked_id = uid) as b (x))));

    -- $1 uid, $2 genders, $3 born_after, $4 born_upto, $5 my cell lat, $6 my cell lon, $7 radius (m),
    -- $8 my gender, $9 my age, $10 my vector (text), $11 my embedding (real[]), $12 as_of,
    -- $13..$15 weights, $16 recency window (s), $17 after rank, $18 after id, $19 limit,
    -- $20 pool size, $21 excluded ids, $22 digest, $23 ids to re-check
    -- over public.deck_profiles (visible profiles only, by construction; cells, never positions)
    filters := 'p.id <> $1'
        || case when genders is not null then ' and p.gender = any ($2)' else '' end
        || ' and p.birthdate > $3 and p.birthdate <= $4'
        || case when radius_m is not null
                then ' and public.geo_within(p.cell_lat, p.cell_lon, $5, $6, $7)'
                     ' and public.geo_distance_m(p.cell_lat, p.cell_lon, $5, $6) <= $7'
                else '' end
        || case when my_gender is not null
                then ' and (cardinality(p.interested_in) = 0 or $8 = any (p.interested_in))'
                else ' and cardinality(p.interested_in) = 0' end
        || case when my_age is not null then ' and $9 between p.pref_min_age and p.pref_max_age' else '' end;

    -- everyone the caller swiped, blocked, was blocked by or matched: as one array, so the
    -- candidate filter is `id <> all ($21)` (hashed by the executor; an anti join here gets a
    -- nested loop, because the planner cannot estimate the box and age filters' selectivity)
    select coalesce(array_agg(x.id), '{}'::uuid[]) into excluded
      from (select s.target_id as id from public.swipes s where s.swiper_id = uid
            union all select b.blocked_id from public.blocks b where b.blocker_id = uid
            union all select b.blocker_id from public.blocks b where b.blocked_id = uid
            union all select m.user_b from public.matches m where m.user_a = uid
            union all select m.user_a from public.matches m where m.user_b = uid) as x;

    -- what leaves the database about another person (p: their profiles row): never the
    -- birthdate, never a position, never a distance finer than its step
    card_cols := ' p.id, p.display_name,'
        || ' extract(year from pg_catalog.age(current_date, p.birthdate))::integer,'
        || ' case when $5 is not null and p.cell_lat is not null'
        || ' then public.geo_distance_step_km(public.geo_distance_m($5, $6, p.cell_lat, p.cell_lon)) end,'
        || ' p.bio, p.photos';

    if p_recheck_ids is not null and p_recheck_digest is not distinct from my_digest then
        return query execute
            'select' || card_cols || ', null::double precision, null::integer, ''recheck''::text, $22'
            || ' from (select p.id, k.ord from unnest($23::uuid[]) with ordinality as k (id, ord)'
            || ' join public.deck_profiles p on p.id = k.id'
            || ' where ' || filters || ' and p.id <> all ($21)) t'
            || ' join public.profiles p on p.id = t.id order by t.ord'
            using uid, genders, born_after, born_upto, my_lat, my_lon, radius_m, my_gender, my_age,
                  my_vec, my_arr, as_of, weights[1], weights[2], weights[3],
                  window_s, p_after_rank, p_after_id, lim, pool_n, excluded, my_digest, p_recheck_ids;
        if found then
            return;
        end if;
        -- nobody of the cached page is left: a fresh page
    end if;

    if my_arr is null then
        strat := 'score';
    elsif not has_vec and strat in ('auto', 'hnsw', 'vector_exact') then
        strat := 'exact';
    elsif strat = 'auto' and radius_m <= p_exact_radius_km * 1000.0 then
        strat := 'vector_exact';  -- a distance-bounded deck: rank it exactly, no need to count
    elsif strat = 'auto' then
        execute 'select count(*)::integer from (select 1 from public.deck_profiles p where ' || filters
                || ' limit $20) c'
           into n_found
          using uid, genders, born_after, born_upto, my_lat, my_lon, radius_m, my_gender, my_age,
                my_vec, my_arr, as_of, weights[1], weights[2], weights[3],
                window_s, p_after_rank, p_after_id, lim, exact_max;
        strat := case when n_found >= exact_max then 'hnsw' else 'vector_exact' end;
    elsif strat = 'score' then
        null;  -- asked for explicitly: ignore embeddings
    end if;

    sim := case strat
        when 'vector_exact' then format('(1.0 - (p.embedding_v operator(%1$I.<=>) $10::%1$I.vector))', vs)
        when 'hnsw' then format('(1.0 - (p.embedding_v operator(%1$I.<=>) $10::%1$I.vector))', vs)
        when 'exact' then 'public.cosine_similarity(p.embedding, $11)'
        else 'null::double precision' end;

    q := 'with ';
    if strat = 'hnsw' then
        perform pg_catalog.set_config('hnsw.ef_search', pool_n::text, true);
        q := q || format('pool as materialized ('
            || 'select e.user_id, (e.embedding_v operator(%1$I.<=>) $10::%1$I.vector) as dist'
            || ' from public.profile_embeddings e'
            || ' order by e.embedding_v operator(%1$I.<=>) $10::%1$I.vector limit $20), ', vs);
    end if;

    -- the HNSW pool (tier 0 of hnsw), then everyone else (tier 1; the only tier otherwise)
    pool_src := 'ranked as (select p.id, 1.0 - pool.dist as sim, p.score, p.last_active_at'
        || ' from pool join public.deck_profiles p on p.id = pool.user_id where ' || filters
        || ' and p.id <> all ($21))';
    rest_src := 'ranked as (select p.id, ' || sim || ' as sim, p.score, p.last_active_at'
        || ' from public.deck_profiles p'
        || ' where ' || filters
        || ' and p.id <> all ($21)'
        || case when strat = 'hnsw' then ' and not exists (select 1 from pool where pool.user_id = p.id)' else '' end
        || ')';
    page_tail := ', top as (select r.id, $13 * coalesce(r.sim, r.score::double precision) + $14 * r.score'
        -- (greatest/least skip nulls: never active must be spelled out as 0)
        || ' + $15 * case when r.last_active_at is null then 0.0'
        || ' else greatest(0.0, least(1.0, 1.0 - extract(epoch from ($12 - r.last_active_at))::double precision / $16)) end'
        || ' as rank from ranked r)'
        || ', page as (select t.id, t.rank from top t%s order by t.rank desc, t.id limit %s)'
        || ' select' || replace(card_cols, '%', '%%') || ', t.rank, %s, %L::text, $22'
        || ' from page t join public.profiles p on p.id = t.id order by t.rank desc, t.id';
    keyset := ' where t.rank < $17 or (t.rank = $17 and t.id > $18)';
    explain := coalesce(pg_catalog.current_setting('edgefn.deck_explain', true), '') = 'on';

    -- hnsw: tier 0 (the pool), then tier 1 (the rest) once the pool runs out; other
    -- strategies have one tier. The cursor's keyset applies within its own tier.
    got := 0;
    for stage in 0 .. case when strat = 'hnsw' then 1 else 0 end loop
        continue when stage < coalesce(p_after_tier, 0);
        sql := q || case when strat = 'hnsw' and stage = 0 then pool_src else rest_src end
            || format(page_tail,
                      case when p_after_rank is not null and stage = coalesce(p_after_tier, 0) then keyset else '' end,
                      lim - got, stage, strat);
        if explain then
            raise notice 'deck: strategy %, tier %', strat, stage;
            for line in execute 'explain (analyze, buffers) ' || sql
                using uid, genders, born_after, born_upto, my_lat, my_lon, radius_m, my_gender, my_age,
                      my_vec, my_arr, as_of, weights[1], weights[2], weights[3],
                      window_s, p_after_rank, p_after_id, lim, pool_n, excluded, my_digest
            loop
                raise notice '%', line;
            end loop;
        end if;
        return query execute sql
            using uid, genders, born_after, born_upto, my_lat, my_lon, radius_m, my_gender, my_age,
                  my_vec, my_arr, as_of, weights[1], weights[2], weights[3],
                  window_s, p_after_rank, p_after_id, lim, pool_n, excluded, my_digest;
        get diagnostics n_found = row_count;
        got := got + n_found;
        -- a short tier 0 ends the page (the cursor then points at tier 1's start): tier 1
        -- is the slow exact ranking of a large set, worth paying for only when asked for,
        -- or when the pool has nothing left at all
        exit when got >= lim or got > 0;
    end loop;
end
$fn$;

revoke all on function public.deck(integer, text[], integer, integer, double precision, text, integer,
    double precision, uuid, timestamptz, double precision[], double precision, integer, integer, double precision,
    uuid[], text)
    from public, anon, authenticated;
grant execute on function public.deck(integer, text[], integer, integer, double precision, text, integer,
    double precision, uuid, timestamptz, double precision[], double precision, integer, integer, double precision,
    uuid[], text)
    to service_role;
