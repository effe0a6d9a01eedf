-- 0021: webhook state from the SET of recorded events (functions/webhooks/state.py).
-- Each delivery keeps its normalized meaning (`fact`) and the stream it belongs to (the
-- events that can touch the same subscriptions: a Paystack customer, a RevenueCat
-- purchase); every delivery re-folds its stream, so arrival order never matters.

alter table public.webhook_deliveries add column if not exists stream text;
alter table public.webhook_deliveries add column if not exists fact jsonb;
-- identifiers this delivery provides to others (a charge's `ref:<reference>`, the RevenueCat
-- ids a TRANSFER moves from: `rc:<id>`)
alter table public.webhook_deliveries add column if not exists keys text[];
-- what a delivery without a stream waits for (a refund: its charge's `ref:<reference>`)
alter table public.webhook_deliveries add column if not exists waits text;

create index if not exists webhook_deliveries_stream_idx on public.webhook_deliveries (provider, stream)
    include (id) where stream is not null;
create index if not exists webhook_deliveries_keys_idx on public.webhook_deliveries using gin (keys)
    where keys is not null;
create index if not exists webhook_deliveries_waits_idx on public.webhook_deliveries (provider, waits)
    where waits is not null and stream is null;

alter table public.subscriptions add column if not exists stream text;
create index if not exists subscriptions_stream_idx on public.subscriptions (provider, stream)
    where stream is not null;

-- `subscription.changed` is collapsed per user while it waits in the outbox: the consumer
-- gets the state the set of events leads to, not every intermediate one (those depend on
-- the order the provider happened to deliver in).
alter table public.outbox add column if not exists collapse_key text;
create unique index if not exists outbox_collapse_idx on public.outbox (collapse_key)
    where processed_at is null and collapse_key is not null;

-- Live users among `p_ids`, and the oldest live user of each of `p_emails` (service role:
-- auth.users belongs to the auth service).
create or replace function public.webhook_resolve(p_ids uuid[], p_emails text[])
returns table (kind text, value text, user_id uuid)
language sql stable security definer
set search_path = ''
as $$
    select 'uid', u.id::text, u.id from auth.users u
     where u.id = any(p_ids) and u.deleted_at is null
    union all
    select * from (
        select distinct on (lower(u.email)) 'email', lower(u.email), u.id from auth.users u
         where lower(u.email) = any(p_emails) and u.deleted_at is null
         order by lower(u.email), u.created_at) e
$$;
revoke all on function public.webhook_resolve(uuid[], text[]) from public, anon, authenticated;
grant execute on function public.webhook_resolve(uuid[], text[]) to service_role;
