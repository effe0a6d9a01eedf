-- 0011: batch swipes applied exactly once, and the recommendation deck.
--
--   public.apply_swipes(...)  one call = one transaction = one round trip for a whole batch:
--                             per-item validation, the like budget, the writes, exactly one
--                             match per mutual pair, the outbox events, the idempotency record.
--   public.deck(...)          the caller's ranked candidates, returning card columns only
--                             (never birthdate, exact coordinates or budget).
--
-- Both take the caller from auth.uid() (the JWT claims the request's transaction sets),
-- never from an argument. apply_swipes is the service's alone: the batch-swipe function
-- calls it as `service_role` with the verified caller's claims, after taking the like quota,
-- so a user cannot call it through the REST API with a budget of their own choosing.

-- -- idempotency records for batch swipes ---------------------------------------------------

-- One row per (user, Idempotency-Key): the request's hash and the response it got. A replay
-- with the same key returns the stored response and writes nothing. Rows older than a day may
-- be pruned with public.prune_swipe_requests() (a replay after that is answered from the
-- swipes themselves: every item comes back as a duplicate, and nothing is counted twice).
create table if not exists public.swipe_requests (
    user_id          uuid not null references auth.users (id) on delete cascade,
    idempotency_key  text not null check (char_length(idempotency_key) between 1 and 200),
    request_hash     text not null,
    response         jsonb not null,
    created_at       timestamptz not null default now(),
    primary key (user_id, idempotency_key)
);
create index if not exists swipe_requests_created_idx on public.swipe_requests (created_at);

alter table public.swipe_requests enable row level security;
drop policy if exists swipe_requests_own on public.swipe_requests;
create policy swipe_requests_own on public.swipe_requests for all to authenticated
    using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

revoke all on public.swipe_requests from anon, authenticated;
grant select on public.swipe_requests to authenticated;
grant all on public.swipe_requests to service_role;

create or replace function public.prune_swipe_requests(older_than interval default interval '1 day')
returns bigint
language sql volatile
set search_path = ''
as $$
    with gone as (
        delete from public.swipe_requests where created_at < pg_catalog.now() - older_than returning 1
    )
    select count(*) from gone
$$;
revoke all on function public.prune_swipe_requests(interval) from public, anon, authenticated;
grant execute on function public.prune_swipe_requests(interval) to service_role;

-- -- apply_swipes ---------------------------------------------------------------------------

-- Security invoker, executable by service_role only. The caller is auth.uid(): the
-- function's transaction sets role service_role and the verified user's claims (see
-- shared/db.py, "service acting for a user"). Every write names that user as the swiper;
-- targets are judged here (self, hidden or deleted, blocked either way) because nothing
-- else stands between a request and the tables.
--
-- p_like_budget is how many likes (like or superlike) the rate limiter granted for this
-- request. Items are judged in order; only likes that can apply use the budget, so a duplicate
-- or an invalid target never takes a later valid like's place. The caller refunds the unused
-- budget (granted minus the likes this returns as applied).
--
-- Results per item: applied | duplicate | invalid_target | self | blocked | quota_exceeded.
-- A swipe on someone already swiped with the same action is a duplicate (nothing written);
-- with another action it replaces the earlier one (the table keeps one row per pair); a
-- changed swipe never removes a match.
--
-- Exactly one match per mutual pair, also when both like each other at the same moment in two
-- READ COMMITTED transactions: after writing its likes, each transaction takes a transaction
-- advisory lock per canonical pair (sorted, so two batches cannot deadlock) and only then
-- looks for the other side's like, in a new statement (a new snapshot). Whichever transaction
-- takes a pair's lock second sees the first one's committed like and creates the match; the
-- first cannot have seen the second's like (it was written before, but committed after, the
-- first's check). The unique (user_a, user_b) constraint stays as the last guard.
--
-- Returns {"replayed": bool, "hash_matches": bool, "response": {...}}.
create or replace function public.apply_swipes(
    p_targets          uuid[],
    p_actions          text[],
    p_like_budget      integer,
    p_idempotency_key  text default null,
    p_request_hash     text default null,
    p_quota_limit      integer default null,
    p_quota_remaining  integer default null
) returns jsonb
language plpgsql volatile
set search_path = ''
as $$
declare
    uid          uuid := auth.uid();
    stored       record;
    items_json   jsonb;
    counts       jsonb;
    liked        uuid[];
    applied_likes integer;
    new_matches  jsonb;
    v_response   jsonb;
begin
    if uid is null then
        raise exception 'apply_swipes: the transaction has no user' using errcode = '42501';
    end if;
    if p_targets is null or p_actions is null
       or cardinality(p_targets) <> cardinality(p_actions)
       or cardinality(p_targets) not between 1 and 50 then
        raise exception 'apply_swipes: 1 to 50 targets with one action each' using errcode = '22023';
    end if;
    if exists (select 1 from unnest(p_actions) a where a is null or a not in ('like', 'pass', 'superlike'))
       or array_position(p_targets, null) is not null then
        raise exception 'apply_swipes: actions are like, pass or superlike' using errcode = '22023';
    end if;
    if not exists (select 1 from public.profiles p where p.id = uid and p.deleted_at is null) then
        raise exception 'apply_swipes: the caller has no profile' using errcode = 'UE404';
    end if;

    if p_idempotency_key is not null then
        -- a concurrent request with the same key waits here until the first one commits
        insert into public.swipe_requests (user_id, idempotency_key, request_hash, response)
        values (uid, p_idempotency_key, coalesce(p_request_hash, ''), '{}'::jsonb)
        on conflict (user_id, idempotency_key) do nothing;
        if not found then
            select r.request_hash, r.response into stored
              from public.swipe_requests r
             where r.user_id = uid and r.idempotency_key = p_idempotency_key;
            return jsonb_build_object(
                'replayed', true,
                'hash_matches', stored.request_hash = coalesce(p_request_hash, ''),
                'response', stored.response);
        end if;
    end if;

    with items as (
        select u.ord::integer as ord, u.target_id, u.action
          from unnest(p_targets, p_actions) with ordinality as u (target_id, action, ord)
    ),
    blocked as (
        select b from public.blocked_either_way(uid) as b
    ),
    judged as (
        select i.ord, i.target_id, i.action,
               case
                   when i.target_id = uid then 'self'
                   when pg_catalog.row_number() over (partition by i.target_id order by i.ord) > 1 then 'duplicate'
                   when not exists (
                       select 1 from public.profiles p
                        where p.id = i.target_id and p.deleted_at is null and not p.hidden
                   ) then 'invalid_target'
                   when exists (select 1 from blocked x where x.b = i.target_id) then 'blocked'
                   when exists (
                       select 1 from public.swipes s
                        where s.swiper_id = uid and s.target_id = i.target_id and s.action = i.action
                   ) then 'duplicate'
                   else 'ok'
               end as status
          from items i
    ),
    numbered as (
        select j.*,
               pg_catalog.count(*) filter (where j.status = 'ok' and j.action <> 'pass')
                   over (order by j.ord) as like_no
          from judged j
    ),
    decided as (
        select n.ord, n.target_id, n.action,
               case when n.status = 'ok' and n.action <> 'pass' and n.like_no > greatest(p_like_budget, 0)
                    then 'quota_exceeded' else n.status end as status
          from numbered n
    ),
    written as (
        -- sorted by target: two concurrent batches of one user lock rows in the same order
        insert into public.swipes as s (swiper_id, target_id, action)
        select uid, d.target_id, d.action from decided d where d.status = 'ok' order by d.target_id
        on conflict (swiper_id, target_id) do update
            set action = excluded.action, created_at = excluded.created_at
            where s.action is distinct from excluded.action
        returning s.target_id
    ),
    final as (
        -- an 'ok' item the insert did not write was swiped the same way by a concurrent request
        select d.ord, d.target_id, d.action,
               case when d.status <> 'ok' then d.status
                    when w.target_id is null then 'duplicate'
                    else 'applied' end as result
          from decided d
          left join written w on w.target_id = d.target_id and d.status = 'ok'
    )
    select jsonb_agg(jsonb_build_object('index', f.ord - 1, 'target_id', f.target_id,
                                        'action', f.action, 'result', f.result) order by f.ord),
           jsonb_build_object(
               'applied', count(*) filter (where f.result = 'applied'),
               'duplicate', count(*) filter (where f.result = 'duplicate'),
               'invalid_target', count(*) filter (where f.result = 'invalid_target'),
               'self', count(*) filter (where f.result = 'self'),
               'blocked', count(*) filter (where f.result = 'blocked'),
               'quota_exceeded', count(*) filter (where f.result = 'quota_exceeded')),
           array_agg(f.target_id order by f.target_id) filter (where f.result = 'applied' and f.action <> 'pass')
      into items_json, counts, liked
      from final f;

    applied_likes := coalesce(cardinality(liked), 0);
    new_matches := '[]'::jsonb;
    if applied_likes > 0 then
        -- one lock per canonical pair, in a fixed order
        perform pg_catalog.pg_advisory_xact_lock(k)
           from (select distinct pg_catalog.hashtextextended(
                        least(uid, t)::text || ':' || greatest(uid, t)::text, 7411) as k
                   from unnest(liked) as t
                  order by 1) as locks;

        -- a new statement: its snapshot includes likes committed while we waited
        with m as (
            insert into public.matches as mt (user_a, user_b)
            select least(uid, x), greatest(uid, x)
              from public.mutual_likes(uid, liked) as x
             order by 1, 2
            on conflict (user_a, user_b) do nothing
            returning mt.id, mt.user_a, mt.user_b, mt.created_at
        ),
        announced as (
            select m.*, public.enqueue_event(
                       'match.created',
                       jsonb_build_object('match_id', m.id, 'user_a', m.user_a, 'user_b', m.user_b,
                                          'created_at', m.created_at),
                       array[m.user_a, m.user_b]) as event_id
              from m
        )
        select coalesce(jsonb_agg(jsonb_build_object(
                   'match_id', a.id,
                   'user_id', case when a.user_a = uid then a.user_b else a.user_a end)
                 order by a.id), '[]'::jsonb)
          into new_matches
          from announced a;
    end if;

    v_response := jsonb_build_object(
        'results', items_json,
        'summary', counts,
        'matches', new_matches,
        'likes', jsonb_build_object(
            'applied', applied_likes,
            'limit', p_quota_limit,
            'remaining', case when p_quota_remaining is null then null
                              else greatest(p_quota_remaining + greatest(p_like_budget, 0) - applied_likes, 0) end));

    if p_idempotency_key is not null then
        update public.swipe_requests r set response = v_response
         where r.user_id = uid and r.idempotency_key = p_idempotency_key;
    end if;
    return jsonb_build_object('replayed', false, 'hash_matches', true, 'response', v_response);
end
$$;

revoke all on function public.apply_swipes(uuid[], text[], integer, text, text, integer, integer)
    from public, anon, authenticated;
grant execute on function public.apply_swipes(uuid[], text[], integer, text, text, integer, integer)
    to service_role;

-- -- the deck -------------------------------------------------------------------------------

-- The deck's candidate table: one row per VISIBLE profile (not deleted, not hidden) with
-- exactly what the filter and the ranking read, embedding included, kept in step with
-- profiles and profile_embeddings by the triggers below. Its index covers every column, so
-- the candidates of a deck come from ONE index-only scan (gender, then a latitude band),
-- embeddings and all. Measured on 100,000 profiles, a 50 km deck of ~2,000 candidates: the
-- (lat, lon) index of 0009 needs a heap visit per row in the box (~28 ms), a covering index
-- on profiles plus one embedding probe per candidate ~14 ms, this table ~4 ms.
-- Nobody reads it directly: RLS on, no grants; public.deck (SECURITY DEFINER) does.
create table if not exists public.deck_profiles (
    id              uuid primary key references public.profiles (id) on delete cascade,
    gender          text,
    birthdate       date,
    interested_in   text[] not null default '{}',
    pref_min_age    smallint not null,
    pref_max_age    smallint not null,
    lat             double precision,
    lon             double precision,
    score           real not null,
    last_active_at  timestamptz,
    embedding       real[]
);

do $$
declare
    vs text;
begin
    if public.has_pgvector() then
        select n.nspname into vs
            from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector';
        if not exists (select 1 from pg_attribute where attrelid = 'public.deck_profiles'::regclass
                       and attname = 'embedding_v' and not attisdropped) then
            execute format(
                'alter table public.deck_profiles add column embedding_v %1$I.vector(64) '
                'generated always as (embedding::%1$I.vector(64)) stored', vs);
        end if;
        create index if not exists deck_profiles_scan_idx on public.deck_profiles (gender, lat)
            include (lon, birthdate, pref_min_age, pref_max_age, interested_in, score, last_active_at, id, embedding_v);
    else
        create index if not exists deck_profiles_scan_idx on public.deck_profiles (gender, lat)
            include (lon, birthdate, pref_min_age, pref_max_age, interested_in, score, last_active_at, id, embedding);
    end if;
end
$$;

alter table public.deck_profiles enable row level security;
revoke all on public.deck_profiles from anon, authenticated;
grant all on public.deck_profiles to service_role;

-- Statement-level triggers with transition tables: one set-based write per statement, so a
-- bulk load (a COPY of 100,000 profiles) costs one statement here, not 100,000 calls.
create or replace function public.deck_profiles_from_profiles() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
    delete from public.deck_profiles d
     using changed_rows c
     where d.id = c.id and (c.deleted_at is not null or c.hidden);
    insert into public.deck_profiles as d (id, gender, birthdate, interested_in, pref_min_age, pref_max_age,
                                           lat, lon, score, last_active_at, embedding)
    select c.id, c.gender, c.birthdate, c.interested_in, c.pref_min_age, c.pref_max_age, c.lat, c.lon, c.score,
           c.last_active_at, e.embedding
      from changed_rows c
      left join public.profile_embeddings e on e.user_id = c.id
     where c.deleted_at is null and not c.hidden
    on conflict (id) do update set
        gender = excluded.gender, birthdate = excluded.birthdate, interested_in = excluded.interested_in,
        pref_min_age = excluded.pref_min_age, pref_max_age = excluded.pref_max_age, lat = excluded.lat,
        lon = excluded.lon, score = excluded.score, last_active_at = excluded.last_active_at
        -- (not the embedding: that is the other trigger's, and a concurrent embedding update
        -- must not be overwritten with the value this statement read)
    where (d.gender, d.birthdate, d.interested_in, d.pref_min_age, d.pref_max_age, d.lat, d.lon, d.score,
           d.last_active_at)
          is distinct from
          (excluded.gender, excluded.birthdate, excluded.interested_in, excluded.pref_min_age, excluded.pref_max_age,
           excluded.lat, excluded.lon, excluded.score, excluded.last_active_at);
    return null;
end
$$;

create or replace function public.deck_profiles_from_embeddings() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
    if tg_op = 'DELETE' then
        update public.deck_profiles d set embedding = null
          from changed_rows c
         where d.id = c.user_id and d.embedding is not null;
    else
        update public.deck_profiles d set embedding = c.embedding
          from changed_rows c
         where d.id = c.user_id and d.embedding is distinct from c.embedding;
    end if;
    return null;
end
$$;
revoke all on function public.deck_profiles_from_profiles() from public, anon, authenticated;
revoke all on function public.deck_profiles_from_embeddings() from public, anon, authenticated;

drop trigger if exists deck_profiles_ins on public.profiles;
create trigger deck_profiles_ins after insert on public.profiles
    referencing new table as changed_rows
    for each statement execute function public.deck_profiles_from_profiles();
drop trigger if exists deck_profiles_upd on public.profiles;
create trigger deck_profiles_upd after update on public.profiles
    referencing new table as changed_rows
    for each statement execute function public.deck_profiles_from_profiles();
drop trigger if exists deck_profiles_ins on public.profile_embeddings;
create trigger deck_profiles_ins after insert on public.profile_embeddings
    referencing new table as changed_rows
    for each statement execute function public.deck_profiles_from_embeddings();
drop trigger if exists deck_profiles_upd on public.profile_embeddings;
create trigger deck_profiles_upd after update on public.profile_embeddings
    referencing new table as changed_rows
    for each statement execute function public.deck_profiles_from_embeddings();
drop trigger if exists deck_profiles_del on public.profile_embeddings;
create trigger deck_profiles_del after delete on public.profile_embeddings
    referencing old table as changed_rows
    for each statement execute function public.deck_profiles_from_embeddings();
-- ALWAYS: also while session_replication_role = replica, which bulk loads (edgefn seed) set
alter table public.profiles enable always trigger deck_profiles_ins;
alter table public.profiles enable always trigger deck_profiles_upd;
alter table public.profile_embeddings enable always trigger deck_profiles_ins;
alter table public.profile_embeddings enable always trigger deck_profiles_upd;
alter table public.profile_embeddings enable always trigger deck_profiles_del;
-- (a deleted profile's row goes with it: deck_profiles.id references profiles on delete cascade)

insert into public.deck_profiles (id, gender, birthdate, interested_in, pref_min_age, pref_max_age, lat, lon, score,
                                  last_active_at, embedding)
select p.id, p.gender, p.birthdate, p.interested_in, p.pref_min_age, p.pref_max_age, p.lat, p.lon, p.score,
       p.last_active_at, e.embedding
  from public.profiles p left join public.profile_embeddings e on e.user_id = p.id
 where p.deleted_at is null and not p.hidden
on conflict (id) do nothing;

-- public.deck: the caller's next `p_limit` candidates, best first, as card rows.
--
-- SECURITY DEFINER so that it can apply rules over rows the caller cannot see (blocks in
-- either direction, the candidates' own preferences) and so that it is the one place that
-- decides which columns of other people's profiles leave the database: id, display name, age
-- (not birthdate), distance rounded to whole km (at least 1, never coordinates), bio, photos.
--
-- Candidates: visible profiles (not deleted, not hidden), not the caller, not swiped by the
-- caller, not blocked either way, not matched; of the genders asked for (default: the
-- caller's interested_in; empty = anyone) and ages asked for (default: the caller's
-- preferences); within p_max_distance_km when given (a lat/lon box on the index, then the
-- exact great-circle distance); and mutual: the candidate's interested_in includes the
-- caller's gender (or is empty) and the caller's age is within the candidate's preferences.
--
-- Rank = w_sim * similarity + w_score * score + w_recency * recency, where similarity is the
-- cosine similarity of the two embeddings (or, when either has none, the candidate's score),
-- and recency falls linearly from 1 (active at p_as_of) to 0 (p_recency_days before). Order:
-- rank desc, id asc, a total order; pages continue after (tier, rank, id) of the last row, so
-- swipes between pages (which only remove candidates) cause no duplicates and no gaps.
-- p_as_of is fixed for a whole pagination (the cursor carries it).
--
-- Strategies (the one used is returned with every row; the cursor pins it for later pages):
--   vector_exact  filter first, rank every candidate exactly with pgvector's <=> (C code);
--   exact         filter first, rank with public.cosine_similarity() (plain SQL: the path
--                 for databases without pgvector);
--   score         the caller has no embedding: rank by score (and recency) alone;
--   hnsw          candidate set too large to rank exactly: tier 0 is the p_pool nearest
--                 embeddings from the HNSW index, filtered and re-ranked; when they run out,
--                 tier 1 ranks the remaining candidates exactly (deep pages only).
--   auto          vector_exact for a deck within p_exact_radius_km; otherwise hnsw when at
--                 least p_exact_max candidates pass the filter (counted, up to that number);
--                 exact where pgvector is missing; score when the caller has no embedding.
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
    p_exact_radius_km  double precision default 100
) returns table (
    id           uuid,
    display_name text,
    age          integer,
    distance_km  integer,
    bio          text,
    photos       jsonb,
    rank         double precision,
    tier         integer,
    strategy     text
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

    select p.gender, p.birthdate, p.interested_in, p.pref_min_age, p.pref_max_age, p.lat, p.lon, e.embedding
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
    radius_m := p_max_distance_km * 1000.0;

    -- $1 uid, $2 genders, $3 born_after, $4 born_upto, $5 my lat, $6 my lon, $7 radius (m),
    -- $8 my gender, $9 my age, $10 my vector (text), $11 my embedding (real[]), $12 as_of,
    -- $13..$15 weights, $16 recency window (s), $17 after rank, $18 after id, $19 limit,
    -- $20 pool size, $21 excluded ids
    -- over public.deck_profiles (visible profiles only, by construction)
    filters := 'p.id <> $1'
        || case when genders is not null then ' and p.gender = any ($2)' else '' end
        || ' and p.birthdate > $3 and p.birthdate <= $4'
        || case when radius_m is not null
                then ' and public.geo_within(p.lat, p.lon, $5, $6, $7)'
                     ' and public.geo_distance_m(p.lat, p.lon, $5, $6) <= $7'
                else '' end
        || case when my_gender is not null
                then ' and (cardinality(p.interested_in) = 0 or $8 = any (p.interested_in))'
                else ' and cardinality(p.interested_in) = 0' end
        || case when my_age is not null then ' and $9 between p.pref_min_age and p.pref_max_age' else '' end;

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

    -- everyone the caller swiped, blocked, was blocked by or matched: as one array, so the
    -- candidate filter is `id <> all ($21)` (hashed by the executor; an anti join here gets a
    -- nested loop, because the planner cannot estimate the box and age filters' selectivity)
    select coalesce(array_agg(x.id), '{}'::uuid[]) into excluded
      from (select s.target_id as id from public.swipes s where s.swiper_id = uid
            union all select b.blocked_id from public.blocks b where b.blocker_id = uid
            union all select b.blocker_id from public.blocks b where b.blocked_id = uid
            union all select m.user_b from public.matches m where m.user_a = uid
            union all select m.user_a from public.matches m where m.user_b = uid) as x;

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
        || ' select p.id, p.display_name,'
        || ' extract(year from pg_catalog.age(current_date, p.birthdate))::integer,'
        || ' case when $5 is not null and p.lat is not null'
        || ' then greatest(1, round(public.geo_distance_m($5, $6, p.lat, p.lon) / 1000.0))::integer end,'
        || ' p.bio, p.photos, t.rank, %s, %L::text'
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
                      window_s, p_after_rank, p_after_id, lim, pool_n, excluded
            loop
                raise notice '%', line;
            end loop;
        end if;
        return query execute sql
            using uid, genders, born_after, born_upto, my_lat, my_lon, radius_m, my_gender, my_age,
                  my_vec, my_arr, as_of, weights[1], weights[2], weights[3],
                  window_s, p_after_rank, p_after_id, lim, pool_n, excluded;
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
    double precision, uuid, timestamptz, double precision[], double precision, integer, integer, double precision)
    from public, anon;
grant execute on function public.deck(integer, text[], integer, integer, double precision, text, integer,
    double precision, uuid, timestamptz, double precision[], double precision, integer, integer, double precision)
    to authenticated, service_role;
