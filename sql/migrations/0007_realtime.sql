-- 0007: realtime: the transactional outbox, the per-user event inbox (catch-up), device
-- tokens for push, and notification preferences.

-- Events to deliver, written in the same transaction as the change that caused them (so an
-- event exists if and only if the change committed) and drained by the orchestrator.
create table if not exists public.outbox (
    id            bigserial primary key,
    event_id      uuid not null unique default gen_random_uuid(),
    event_type    text not null check (char_length(event_type) between 1 and 100),
    payload       jsonb not null default '{}'::jsonb,
    recipients    uuid[] not null default '{}',
    -- who enqueued it (auth.uid() of the transaction; null for service work)
    actor_id      uuid,
    created_at    timestamptz not null default now(),
    -- not before (retry backoff moves it forward)
    available_at  timestamptz not null default now(),
    attempts      integer not null default 0,
    last_error    text,
    processed_at  timestamptz
);
-- the drain query: unprocessed rows that are due, oldest first
create index if not exists outbox_pending_idx on public.outbox (available_at, id) where processed_at is null;

alter table public.outbox enable row level security;

revoke all on public.outbox from anon, authenticated;
grant all on public.outbox to service_role;
grant usage, select on sequence public.outbox_id_seq to service_role;

-- Enqueue an event in the current transaction. Returns the event id. The service role only
-- (our functions, and SECURITY DEFINER triggers): a user calling it through the REST API
-- could otherwise notify anyone of anything. The row records auth.uid() as actor_id (set
-- when the service acts for a verified user), so the orchestrator can tell user-originated
-- events from service ones and hold them to the routing rules' user_origin checks.
create or replace function public.enqueue_event(event_type text, payload jsonb, recipients uuid[])
returns uuid
language sql volatile security definer
set search_path = ''
as $$
    insert into public.outbox (event_type, payload, recipients, actor_id)
    values (event_type, coalesce(payload, '{}'::jsonb), coalesce(recipients, '{}'::uuid[]), auth.uid())
    returning event_id
$$;

revoke all on function public.enqueue_event(text, jsonb, uuid[]) from public, anon, authenticated;
grant execute on function public.enqueue_event(text, jsonb, uuid[]) to service_role;

-- What each user was sent, in order: a reconnecting client asks for everything after the
-- last id it saw. Written by the service; the owner reads.
create table if not exists public.user_events (
    id          bigserial primary key,
    user_id     uuid not null references auth.users (id) on delete cascade,
    event_type  text not null,
    payload     jsonb not null default '{}'::jsonb,
    created_at  timestamptz not null default now()
);
create index if not exists user_events_user_idx on public.user_events (user_id, id);

alter table public.user_events enable row level security;
drop policy if exists user_events_select_own on public.user_events;
create policy user_events_select_own on public.user_events for select to authenticated
    using (user_id = (select auth.uid()));

revoke all on public.user_events from anon, authenticated;
grant select on public.user_events to authenticated;
grant all on public.user_events to service_role;
grant usage, select on sequence public.user_events_id_seq to service_role;

create table if not exists public.device_tokens (
    id            uuid primary key default gen_random_uuid(),
    user_id       uuid not null references auth.users (id) on delete cascade,
    platform      text not null check (platform in ('fcm', 'apns')),
    token         text not null unique check (char_length(token) between 1 and 4096),
    active        boolean not null default true,
    created_at    timestamptz not null default now(),
    last_seen_at  timestamptz not null default now()
);
create index if not exists device_tokens_user_idx on public.device_tokens (user_id) where active;

alter table public.device_tokens enable row level security;
drop policy if exists device_tokens_own on public.device_tokens;
create policy device_tokens_own on public.device_tokens for all to authenticated
    using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

revoke all on public.device_tokens from anon, authenticated;
grant select, insert, update, delete on public.device_tokens to authenticated;
grant all on public.device_tokens to service_role;

create table if not exists public.notification_preferences (
    user_id         uuid primary key references auth.users (id) on delete cascade,
    -- per channel and event type switches, e.g. {"push": {"match": true}, "realtime": {...}}
    channels        jsonb not null default '{}'::jsonb,
    quiet_start     time,
    quiet_end       time,
    timezone        text not null default 'UTC',
    push_daily_cap  integer check (push_daily_cap >= 0),
    updated_at      timestamptz not null default now()
);

drop trigger if exists notification_preferences_touch on public.notification_preferences;
create trigger notification_preferences_touch before update on public.notification_preferences
    for each row execute function public.touch_updated_at();

alter table public.notification_preferences enable row level security;
drop policy if exists notification_preferences_own on public.notification_preferences;
create policy notification_preferences_own on public.notification_preferences for all to authenticated
    using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

revoke all on public.notification_preferences from anon, authenticated;
grant select, insert, update, delete on public.notification_preferences to authenticated;
grant all on public.notification_preferences to service_role;
