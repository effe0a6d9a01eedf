-- 0014: the realtime orchestrator's delivery ledger.
--
-- The outbox (0007) holds events; routing turns each event into inbox rows (user_events)
-- and one delivery row per (event, channel, target): the unique key is what makes delivery
-- idempotent (nothing is sent twice to the same device for the same event, however many
-- drainers run). Every attempt is recorded; a delivery that keeps failing ends `dead`
-- (the dead letters `edgefn outbox status` lists). Service role only: no user policies.

-- inbox rows remember their event, so routing an event twice cannot duplicate them
alter table public.user_events add column if not exists event_id uuid;
create unique index if not exists user_events_event_idx on public.user_events (user_id, event_id);

create table if not exists public.event_deliveries (
    id                bigserial primary key,
    event_id          uuid not null,
    -- realtime: the private topic; push: the device_tokens id; cache: the cache scope
    channel           text not null check (channel in ('realtime', 'push', 'cache')),
    target            text not null check (char_length(target) between 1 and 300),
    user_id           uuid not null references auth.users (id) on delete cascade,
    event_type        text not null,
    priority          text not null check (priority in ('urgent', 'normal', 'low')),
    payload           jsonb not null default '{}'::jsonb,
    -- pending: waiting for available_at; leased: a drainer holds it until available_at (the
    -- lease expiry), then it is due again; sent; dead (retries exhausted); dropped (the
    -- device is gone); suppressed (the user's daily push cap)
    status            text not null default 'pending'
                      check (status in ('pending', 'leased', 'sent', 'dead', 'dropped', 'suppressed')),
    available_at      timestamptz not null,
    lease_owner       text,
    attempts          integer not null default 0,
    -- counted against the user's daily push cap (a retry does not count twice)
    counted           boolean not null default false,
    last_error        text,
    event_created_at  timestamptz not null,
    created_at        timestamptz not null default now(),
    sent_at           timestamptz,
    constraint event_deliveries_once unique (event_id, channel, target)
);
-- the drain: due rows of one channel, oldest first
create index if not exists event_deliveries_due_idx on public.event_deliveries (channel, available_at, id)
    where status in ('pending', 'leased');
-- a user's open push batch (the coalescing window)
create index if not exists event_deliveries_open_push_idx on public.event_deliveries (user_id, available_at)
    where status = 'pending' and channel = 'push' and priority = 'normal';
create index if not exists event_deliveries_dead_idx on public.event_deliveries (id) where status = 'dead';

alter table public.event_deliveries enable row level security;
revoke all on public.event_deliveries from anon, authenticated;
grant all on public.event_deliveries to service_role;
grant usage, select on sequence public.event_deliveries_id_seq to service_role;

create table if not exists public.event_delivery_attempts (
    id            bigserial primary key,
    delivery_id   bigint not null references public.event_deliveries (id) on delete cascade,
    attempt       integer not null,
    outcome       text not null check (outcome in ('sent', 'retry', 'throttled', 'dead', 'dropped')),
    status_code   integer,
    error         text,
    at            timestamptz not null,
    duration_ms   real
);
create index if not exists event_delivery_attempts_delivery_idx on public.event_delivery_attempts (delivery_id);

alter table public.event_delivery_attempts enable row level security;
revoke all on public.event_delivery_attempts from anon, authenticated;
grant all on public.event_delivery_attempts to service_role;
grant usage, select on sequence public.event_delivery_attempts_id_seq to service_role;

-- pushes sent per user per local day (the cap); one coalesced push counts once
create table if not exists public.push_daily_counts (
    user_id  uuid not null references auth.users (id) on delete cascade,
    day      date not null,
    sent     integer not null default 0 check (sent >= 0),
    primary key (user_id, day)
);

alter table public.push_daily_counts enable row level security;
revoke all on public.push_daily_counts from anon, authenticated;
grant all on public.push_daily_counts to service_role;

-- Which of these ids are live users. The service role cannot read auth.users (on Supabase
-- it belongs to the auth service); routing needs to skip deleted users (the inbox and the
-- ledger reference auth.users).
create or replace function public.live_user_ids(ids uuid[]) returns setof uuid
language sql stable security definer
set search_path = ''
as $$
    select u.id from auth.users u where u.id = any (ids) and u.deleted_at is null
$$;
revoke all on function public.live_user_ids(uuid[]) from public, anon, authenticated;
grant execute on function public.live_user_ids(uuid[]) to service_role;

-- Supabase Realtime private topics: a user may receive broadcasts on `user:<their id>` only.
-- Created only where Realtime's schema exists (Supabase), not on a bare Postgres.
do $$
begin
    if to_regclass('realtime.messages') is not null and to_regprocedure('realtime.topic()') is not null then
        execute 'drop policy if exists edgefn_user_topic_receive on realtime.messages';
        execute $p$
            create policy edgefn_user_topic_receive on realtime.messages for select to authenticated
            using (realtime.messages.extension = 'broadcast'
                   and (select realtime.topic()) = 'user:' || (select auth.uid())::text)
        $p$;
    end if;
end
$$;
