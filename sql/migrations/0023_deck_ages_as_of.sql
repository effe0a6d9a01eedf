-- 0023: deck() counts ages on the day of its as_of (UTC), which the function passes from its
-- own clock, instead of the database's current_date. With current_date, a deck computed
-- just after midnight UTC, or by a function whose clock is not the database's, filtered
-- and showed ages of another day than the one its cursor was made on, and a test with a
-- frozen clock disagreed with the database on birthdays, month ends and 29 February.
-- The rest of deck() is 0020's, unchanged.

create or replace function public.deck(
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
    -- ages are counted on as_of's day (UTC), not the database's: the function's clock decides,
    -- and every page of one deck (one cursor, one as_of) filters by the same ages
    today      date := (coalesce(p_as_of, pg_catalog.now()) at time zone 'UTC')::date;
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

    my_age := extract(year from pg_catalog.age(today, my_birth))::integer;
    genders := coalesce(p_genders, nullif(my_wants, '{}'::text[]));
    lo_age := coalesce(p_min_age, my_min);
    hi_age := coalesce(p_max_age, my_max);
    born_upto := (today - pg_catalog.make_interval(years => lo_age))::date;
    born_after := (today - pg_catalog.make_interval(years => hi_age + 1))::date;
    radius_m := public.geo_radius_step_km(p_max_distance_km) * 1000.0;

    -- Everything that decides which people may be in the caller's deck, other than each
    -- candidate's own row (re-checked one by one): a change to any of it invalidates a
    -- cached page. Blocks in either direction are here because an unblock brings someone
    -- back, which re-checking the cached ids cannot.
    my_digest := pg_catalog.md5(pg_catalog.concat_ws('|', my_gender, my_birth, my_wants::text, my_min, my_max,
        my_lat, my_lon, genders::text, lo_age, hi_age, radius_m, today,
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
        || ' extract(year from pg_catalog.age(($12 at time zone ''UTC'')::date, p.birthdate))::integer,'
        || ' case when $5 is not null and p.cell_lat is not null'
        || ' then public.geo_distance_step_km(public.geo_distance_m($5, $6, p.cell_lat, p.cell_lon)) end,'
        || ' p.bio, p.photos';

    if p_recheck_ids is not null and p_recheck_digest is not distinct from my_digest then
        -- One primary-key probe per cached id: the LIMIT keeps the planner from flattening
        -- the lateral subquery into a join, where it preferred scanning the whole distance
        -- box (thousands of rows, ~70 ms on 100,000 profiles) to probing 50 ids.
        return query execute
            'select' || card_cols || ', null::double precision, null::integer, ''recheck''::text, $22'
            || ' from unnest($23::uuid[]) with ordinality as k (id, ord)'
            || ' cross join lateral (select p.id from public.deck_profiles p'
            || ' where p.id = k.id and ' || filters || ' and p.id <> all ($21) limit 1) t'
            || ' join public.profiles p on p.id = t.id order by k.ord'
            using uid, genders, born_after, born_upto, my_lat, my_lon, radius_m, my_gender, my_age,
                  my_vec, my_arr, as_of, weights[1], weights[2], weights[3],
                  window_s, p_after_rank, p_after_id, lim, pool_n, excluded, my_digest, p_recheck_ids;
        if found then
            return;
        end if;
        -- nobody of the cached page is left: a fresh page
    end if;

    if has_vec then
        select n.nspname into vs
          from pg_catalog.pg_extension x join pg_catalog.pg_namespace n on n.oid = x.extnamespace
         where x.extname = 'vector';
        execute 'select embedding_v::text from public.profile_embeddings where user_id = $1' into my_vec using uid;
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
