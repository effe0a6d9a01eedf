-- 0003: dating: embeddings, swipes, matches, blocks, and the SECURITY DEFINER helpers that
-- let a user's transaction (running under RLS) ask questions about rows it cannot see.

-- Profile embeddings (64 dimensions).
--
-- `embedding real[]` is the source of truth everywhere. Where the `vector` extension is
-- available (Supabase, the embedded PG16) the DO block below also adds `embedding_v
-- vector(64)`, a STORED generated column (so it can never drift from `embedding`), with an
-- HNSW index for cosine distance. Where it is not (the machine's PG15), the recommendations
-- function ranks the already filtered candidates exactly with public.cosine_similarity().
-- The app asks public.has_pgvector() which path to take.
create table if not exists public.profile_embeddings (
    user_id     uuid primary key references public.profiles (id) on delete cascade,
    embedding   real[] not null
                check (array_ndims(embedding) = 1 and cardinality(embedding) = 64
                       and array_position(embedding, null) is null),
    model       text not null default 'seed-v1',
    updated_at  timestamptz not null default now()
);

do $$
declare
    vs text;
begin
    if exists (select 1 from pg_available_extensions where name = 'vector') then
        begin
            create extension if not exists vector;
        exception when insufficient_privilege then
            raise notice 'vector is available but cannot be created here; using the exact path';
            return;
        end;
        select n.nspname into vs
            from pg_extension e join pg_namespace n on n.oid = e.extnamespace
            where e.extname = 'vector';
        if not exists (
            select 1 from pg_attribute
            where attrelid = 'public.profile_embeddings'::regclass
              and attname = 'embedding_v' and not attisdropped
        ) then
            execute format(
                'alter table public.profile_embeddings add column embedding_v %1$I.vector(64) '
                'generated always as (embedding::%1$I.vector(64)) stored', vs);
        end if;
        execute format(
            'create index if not exists profile_embeddings_hnsw_idx on public.profile_embeddings '
            'using hnsw (embedding_v %I.vector_cosine_ops)', vs);
    end if;
end
$$;

-- Which ranking path this database supports (true: ORDER BY embedding_v <=> ... via HNSW).
create or replace function public.has_pgvector() returns boolean
language sql stable
set search_path = ''
as $$
    select exists (
        select 1 from pg_catalog.pg_attribute
        where attrelid = 'public.profile_embeddings'::pg_catalog.regclass
          and attname = 'embedding_v' and not attisdropped
    )
$$;

-- Exact cosine similarity of two equal-length arrays (the fallback ranking).
create or replace function public.cosine_similarity(a real[], b real[]) returns double precision
language sql immutable parallel safe
return (
    select sum(x::float8 * y) / nullif(sqrt(sum(x::float8 * x)) * sqrt(sum(y::float8 * y)), 0)
    from unnest(a, b) as t(x, y)
);

alter table public.profile_embeddings enable row level security;
-- Readable where the profile is (own, or visible to the deck); written by the service.
drop policy if exists profile_embeddings_select on public.profile_embeddings;
create policy profile_embeddings_select on public.profile_embeddings for select to authenticated
    using (
        user_id = (select auth.uid())
        or exists (select 1 from public.profiles p
                   where p.id = user_id and p.deleted_at is null and not p.hidden)
    );

revoke all on public.profile_embeddings from anon, authenticated;
grant select on public.profile_embeddings to authenticated;
grant all on public.profile_embeddings to service_role;

-- Swipes: one row per (swiper, target); a later swipe on the same person updates it.
create table if not exists public.swipes (
    swiper_id   uuid not null references public.profiles (id) on delete cascade,
    target_id   uuid not null references public.profiles (id) on delete cascade,
    action      text not null check (action in ('like', 'pass', 'superlike')),
    created_at  timestamptz not null default now(),
    primary key (swiper_id, target_id),
    constraint swipes_not_self check (swiper_id <> target_id)
);
-- "Did X like me?" for one X is a primary key lookup (swiper_id = X, target_id = me).
-- "Who liked me?" reads this reverse index; action is INCLUDEd so likes are filtered from the
-- index alone. It is deliberately NOT partial (where action in (like, superlike)): the
-- `on delete cascade` on target_id needs an index covering every row, or deleting a
-- profile would scan the whole table.
create index if not exists swipes_target_idx on public.swipes (target_id, swiper_id) include (action);

-- A user reads their own swipes. Nobody writes them directly: a like spends the daily like
-- quota, so swipes are written only by public.apply_swipes() (0011), which the batch-swipe
-- function calls as the service for the verified caller, after the quota is taken.
alter table public.swipes enable row level security;
drop policy if exists swipes_own on public.swipes;
create policy swipes_own on public.swipes for select to authenticated
    using (swiper_id = (select auth.uid()));

revoke all on public.swipes from anon, authenticated;
grant select on public.swipes to authenticated;
grant all on public.swipes to service_role;

-- Blocks: visible to the blocker only.
create table if not exists public.blocks (
    blocker_id  uuid not null references public.profiles (id) on delete cascade,
    blocked_id  uuid not null references public.profiles (id) on delete cascade,
    created_at  timestamptz not null default now(),
    primary key (blocker_id, blocked_id),
    constraint blocks_not_self check (blocker_id <> blocked_id)
);
create index if not exists blocks_blocked_idx on public.blocks (blocked_id, blocker_id);

alter table public.blocks enable row level security;
drop policy if exists blocks_own on public.blocks;
create policy blocks_own on public.blocks for all to authenticated
    using (blocker_id = (select auth.uid())) with check (blocker_id = (select auth.uid()));

revoke all on public.blocks from anon, authenticated;
grant select, insert, delete on public.blocks to authenticated;
grant all on public.blocks to service_role;

-- Matches: one row per pair, stored in canonical order (user_a < user_b).
create table if not exists public.matches (
    id          uuid primary key default gen_random_uuid(),
    user_a      uuid not null references public.profiles (id) on delete cascade,
    user_b      uuid not null references public.profiles (id) on delete cascade,
    created_at  timestamptz not null default now(),
    constraint matches_canonical check (user_a < user_b),
    constraint matches_pair_key unique (user_a, user_b)
);
create index if not exists matches_user_b_idx on public.matches (user_b, user_a);

-- Helpers callable from a user's transaction. SECURITY DEFINER (they read rows RLS hides
-- from the caller), search_path pinned to nothing, every name qualified. They return ids or
-- a boolean, never rows. A caller running as `authenticated` may only ask about itself;
-- service work (any other role) may ask about anyone.

-- Everyone the user blocked or was blocked by: the deck must exclude both.
create or replace function public.blocked_either_way(uid uuid) returns setof uuid
language plpgsql stable security definer
set search_path = ''
rows 10
as $$
begin
    if uid is distinct from auth.uid()
       and pg_catalog.current_setting('role', true) in ('authenticated', 'anon') then
        raise exception 'blocked_either_way: a user may only ask about themselves'
            using errcode = '42501';
    end if;
    return query
        select b.blocked_id from public.blocks b where b.blocker_id = uid
        union
        select b.blocker_id from public.blocks b where b.blocked_id = uid;
end
$$;

-- Of `ids`, those with whom `uid` has a mutual like (both sides like or superlike).
create or replace function public.mutual_likes(uid uuid, ids uuid[]) returns setof uuid
language plpgsql stable security definer
set search_path = ''
rows 10
as $$
begin
    if uid is distinct from auth.uid()
       and pg_catalog.current_setting('role', true) in ('authenticated', 'anon') then
        raise exception 'mutual_likes: a user may only ask about themselves'
            using errcode = '42501';
    end if;
    return query
        select mine.target_id
        from public.swipes mine
        join public.swipes theirs
          on theirs.swiper_id = mine.target_id and theirs.target_id = mine.swiper_id
        where mine.swiper_id = uid
          and mine.target_id = any (ids)
          and mine.action in ('like', 'superlike')
          and theirs.action in ('like', 'superlike');
end
$$;

-- True when a and b like each other. A user asking about a pair they are not in gets false.
create or replace function public.is_mutual_like(a uuid, b uuid) returns boolean
language sql stable security definer
set search_path = ''
as $$
    select (pg_catalog.current_setting('role', true) not in ('authenticated', 'anon')
            or (select auth.uid()) in (a, b))
       and exists (select 1 from public.swipes s
                   where s.swiper_id = a and s.target_id = b and s.action in ('like', 'superlike'))
       and exists (select 1 from public.swipes s
                   where s.swiper_id = b and s.target_id = a and s.action in ('like', 'superlike'))
$$;

-- Both users of a match read it and either may unmatch (delete). Matches are created only by
-- public.apply_swipes() (0011), in the transaction of the like that completes the pair, with
-- its match.created event: a match written any other way would notify nobody.
alter table public.matches enable row level security;
drop policy if exists matches_select on public.matches;
create policy matches_select on public.matches for select to authenticated
    using ((select auth.uid()) in (user_a, user_b));
drop policy if exists matches_insert on public.matches;
drop policy if exists matches_delete on public.matches;
create policy matches_delete on public.matches for delete to authenticated
    using ((select auth.uid()) in (user_a, user_b));

revoke all on public.matches from anon, authenticated;
grant select, delete on public.matches to authenticated;
grant all on public.matches to service_role;

revoke all on function public.blocked_either_way(uuid) from public, anon;
revoke all on function public.mutual_likes(uuid, uuid[]) from public, anon;
revoke all on function public.is_mutual_like(uuid, uuid) from public, anon;
grant execute on function public.blocked_either_way(uuid) to authenticated, service_role;
grant execute on function public.mutual_likes(uuid, uuid[]) to authenticated, service_role;
grant execute on function public.is_mutual_like(uuid, uuid) to authenticated, service_role;
grant execute on function public.has_pgvector() to anon, authenticated, service_role;
grant execute on function public.cosine_similarity(real[], real[]) to anon, authenticated, service_role;
