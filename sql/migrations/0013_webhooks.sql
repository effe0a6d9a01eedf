-- 0013: what the webhooks function needs beyond 0006: who a provider's customer is, which
-- deliveries still wait for something, and tier writes to Redis that have to be retried.
-- Service role only: no user policies on any of these.

-- A delivery's outcome (one of):
--   received  stored, not processed yet (never outlives its transaction on the live path)
--   applied   its effect is in the database (possibly "no change")
--   stale     older than the newest event already applied to its subscription: recorded only
--   ignored   an event we do not act on (TEST, unknown types, payments without a plan ...)
--   flagged   suspicious, recorded for a human, never granted (amount or currency differs
--             from the plan's price, unknown plan, partial refund ...)
--   pending   waits for something (`error` says what: an unknown user, a refund before its
--             charge, a provider re-read that failed); reconciliation retries it
--   failed    applying raised; replayed after the fix (`edgefn webhooks replay`)
--   invalid   correctly signed but not a JSON event
alter table public.webhook_deliveries add column if not exists subscription_id uuid
    references public.subscriptions (id) on delete set null;
-- the provider's name for the customer (RevenueCat app_user_id, Paystack customer email):
-- what an operator searches for, and what a pending delivery waits on
alter table public.webhook_deliveries add column if not exists subject text;
alter table public.webhook_deliveries add column if not exists attempts integer not null default 0;

do $$
begin
    if not exists (select 1 from pg_constraint where conname = 'webhook_deliveries_outcome_check') then
        alter table public.webhook_deliveries add constraint webhook_deliveries_outcome_check
            check (outcome in ('received', 'applied', 'stale', 'ignored', 'flagged', 'pending', 'failed', 'invalid'));
    end if;
end
$$;

-- the reconciliation queue: small, so a partial index keeps the scan cheap
create index if not exists webhook_deliveries_retry_idx on public.webhook_deliveries (received_at)
    where outcome in ('received', 'pending', 'failed');
-- replay --since walks deliveries in event order
create index if not exists webhook_deliveries_event_idx on public.webhook_deliveries (coalesce(event_at, received_at), id);
create index if not exists webhook_deliveries_subscription_idx on public.webhook_deliveries (subscription_id)
    where subscription_id is not null;

-- Paystack's later events (subscription.*, invoice.*) name the subscription by its code
create index if not exists subscriptions_paystack_code_idx on public.subscriptions ((metadata ->> 'subscription_code'))
    where provider = 'paystack';

-- A provider's id for one of our users: Paystack customer codes, RevenueCat anonymous ids
-- and aliases. Learnt when an event names both (a user id and the provider's id), so later
-- events that carry only the provider's id find the user.
create table if not exists public.billing_customers (
    provider     text not null check (provider in ('paystack', 'revenuecat')),
    external_id  text not null check (char_length(external_id) between 1 and 500),
    user_id      uuid not null references auth.users (id) on delete cascade,
    created_at   timestamptz not null default now(),
    primary key (provider, external_id)
);
create index if not exists billing_customers_user_idx on public.billing_customers (user_id);

alter table public.billing_customers enable row level security;
revoke all on public.billing_customers from anon, authenticated;
grant all on public.billing_customers to service_role;

-- Tier writes to the rate limiter's Redis key that failed (Redis down or slow). The tier is
-- already in public.user_tiers (the source of truth); reconciliation pushes these again.
create table if not exists public.tier_sync_pending (
    user_id    uuid primary key references auth.users (id) on delete cascade,
    tier       text not null check (tier in ('free', 'paid', 'admin')),
    queued_at  timestamptz not null default now(),
    attempts   integer not null default 0,
    last_error text
);

alter table public.tier_sync_pending enable row level security;
revoke all on public.tier_sync_pending from anon, authenticated;
grant all on public.tier_sync_pending to service_role;

-- The webhooks find users in auth.users, which the API roles cannot read (on Supabase it
-- belongs to the auth service). These two definer functions expose exactly the lookups
-- needed, to the service role only.

-- The first live user among `p_ids` (in their order), else the oldest with this email.
create or replace function public.webhook_find_user(p_ids uuid[], p_email text)
returns uuid
language sql stable security definer
set search_path = ''
as $$
    select coalesce(
        (select u.id from unnest(p_ids) with ordinality as x(id, ord)
           join auth.users u on u.id = x.id and u.deleted_at is null
          order by x.ord limit 1),
        (select u.id from auth.users u
          where p_email is not null and u.email = p_email and u.deleted_at is null
          order by u.created_at limit 1))
$$;

-- Which of `p_ids` are users (deleted ones included: their subscriptions may still move).
create or replace function public.webhook_existing_users(p_ids uuid[])
returns setof uuid
language sql stable security definer
set search_path = ''
as $$
    select u.id from auth.users u where u.id = any(p_ids)
$$;

revoke all on function public.webhook_find_user(uuid[], text) from public, anon, authenticated;
revoke all on function public.webhook_existing_users(uuid[]) from public, anon, authenticated;
grant execute on function public.webhook_find_user(uuid[], text) to service_role;
grant execute on function public.webhook_existing_users(uuid[]) to service_role;
