-- 0006: subscription plans, subscriptions and the webhook delivery log.
-- Subscriptions and deliveries are written only by the service role (the webhooks
-- function); a user may read their own subscriptions.

create table if not exists public.subscription_plans (
    code                text primary key,
    provider            text not null check (provider in ('paystack', 'revenuecat')),
    tier                text not null check (tier in ('free', 'paid', 'admin')),
    -- price in the currency's minor unit (kobo for NGN, cents for USD)
    amount_minor        bigint not null check (amount_minor >= 0),
    currency            char(3) not null check (currency ~ '^[A-Z]{3}$'),
    interval            text not null check (interval in ('monthly', 'yearly')),
    -- the provider's own plan id (Paystack PLN_..., a store product id), when known
    provider_plan_code  text unique,
    active              boolean not null default true,
    created_at          timestamptz not null default now()
);

-- The free tier is implicit (no plan, no subscription). Pro, as the original app priced it:
-- NGN 2,000 a month or NGN 20,000 a year.
insert into public.subscription_plans (code, provider, tier, amount_minor, currency, interval)
values ('pro_monthly', 'paystack', 'paid', 200000, 'NGN', 'monthly'),
       ('pro_yearly', 'paystack', 'paid', 2000000, 'NGN', 'yearly')
on conflict (code) do nothing;

alter table public.subscription_plans enable row level security;
drop policy if exists subscription_plans_public_read on public.subscription_plans;
create policy subscription_plans_public_read on public.subscription_plans for select to anon, authenticated
    using (active);

revoke all on public.subscription_plans from anon, authenticated;
grant select on public.subscription_plans to anon, authenticated;
grant all on public.subscription_plans to service_role;

create table if not exists public.subscriptions (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references auth.users (id) on delete cascade,
    provider            text not null check (provider in ('paystack', 'revenuecat')),
    -- the provider's id for this subscription (Paystack subscription_code, RevenueCat
    -- original transaction id)
    provider_ref        text not null,
    -- not a foreign key: store product ids (RevenueCat) need not be rows in subscription_plans
    plan_code           text,
    tier                text not null default 'paid' check (tier in ('free', 'paid', 'admin')),
    status              text not null
                        check (status in ('active', 'non_renewing', 'cancelled', 'past_due',
                                          'paused', 'expired', 'pending')),
    current_period_end  timestamptz,
    -- ordering guard: an event older than this is not applied (providers retry and reorder)
    last_event_at       timestamptz,
    metadata            jsonb not null default '{}'::jsonb,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    constraint subscriptions_provider_ref_key unique (provider, provider_ref)
);
create index if not exists subscriptions_user_idx on public.subscriptions (user_id, status);

drop trigger if exists subscriptions_touch on public.subscriptions;
create trigger subscriptions_touch before update on public.subscriptions
    for each row execute function public.touch_updated_at();

alter table public.subscriptions enable row level security;
drop policy if exists subscriptions_select_own on public.subscriptions;
create policy subscriptions_select_own on public.subscriptions for select to authenticated
    using (user_id = (select auth.uid()));

revoke all on public.subscriptions from anon, authenticated;
grant select on public.subscriptions to authenticated;
grant all on public.subscriptions to service_role;

-- Every webhook delivery, recorded exactly once per (provider, dedupe_key) before it is
-- applied; `body` is the raw request body byte for byte (signatures can be re-verified and
-- deliveries replayed). No user policies: service role only.
create table if not exists public.webhook_deliveries (
    id            bigserial primary key,
    provider      text not null check (provider in ('paystack', 'revenuecat')),
    dedupe_key    text not null,
    event_type    text,
    -- the provider's own timestamp for the event, when it has one
    event_at      timestamptz,
    received_at   timestamptz not null default now(),
    headers       jsonb not null default '{}'::jsonb,
    body          bytea not null,
    outcome       text not null default 'received',
    -- not a foreign key: the log outlives users and may name users we do not know
    user_id       uuid,
    error         text,
    processed_at  timestamptz,
    constraint webhook_deliveries_dedupe_key unique (provider, dedupe_key)
);
create index if not exists webhook_deliveries_received_idx on public.webhook_deliveries (received_at desc);

alter table public.webhook_deliveries enable row level security;

revoke all on public.webhook_deliveries from anon, authenticated;
grant all on public.webhook_deliveries to service_role;
grant usage, select on sequence public.webhook_deliveries_id_seq to service_role;
