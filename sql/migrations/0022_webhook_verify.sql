-- 0022: deliveries whose provider read-back failed (PAYSTACK_VERIFY / REVENUECAT_VERIFY:
-- the provider slow, down, or its breaker open). The body was applied; reconciliation
-- (functions/webhooks/reconcile.py) reads the provider again and applies its answer, then
-- deletes the row. Service role only, like the deliveries themselves.
create table if not exists public.webhook_verify_pending (
    delivery_id  bigint primary key references public.webhook_deliveries (id) on delete cascade,
    provider     text not null check (provider in ('paystack', 'revenuecat')),
    queued_at    timestamptz not null default now(),
    attempts     integer not null default 0,
    last_error   text
);
create index if not exists webhook_verify_pending_queued_idx on public.webhook_verify_pending (queued_at);
alter table public.webhook_verify_pending enable row level security;
revoke all on public.webhook_verify_pending from anon, authenticated;
grant all on public.webhook_verify_pending to service_role;

-- Plans registered by `edgefn plans sync` (edgefn/plans.py) may bill at any interval Paystack
-- offers that renews on a calendar (functions.webhooks.state.add_interval knows each);
-- `yearly` stays for the plans 0006 created. Paystack's `hourly` (for tests) is not accepted.
alter table public.subscription_plans drop constraint if exists subscription_plans_interval_check;
alter table public.subscription_plans add constraint subscription_plans_interval_check
    check (interval in ('daily', 'weekly', 'monthly', 'quarterly', 'biannually', 'annually', 'yearly'));
