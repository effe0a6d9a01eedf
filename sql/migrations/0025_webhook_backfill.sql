-- 0025: deliveries stored before 0021 carry no `fact`, so the fold (0021) could not see
-- them: a refund of such a charge waited forever, and the first new event of an older
-- subscription re-folded it from the new events alone. Reconciliation
-- (functions/webhooks/backfill.py) now records their facts from the stored bodies, a batch
-- per run, and once every one is recorded re-folds each stream they belong to. This row
-- says how far it got. On a database with no such deliveries it starts finished.
create table if not exists public.webhook_backfill (
    only_row      boolean primary key default true check (only_row),
    -- the newest delivery stored without a fact when this migration ran: nothing after it
    -- needs a backfill (every later delivery records its fact as it arrives)
    until_id      bigint not null,
    -- phase 1: deliveries up to this id have their facts
    fact_cursor   bigint not null default 0,
    -- phase 2: streams (provider, stream) up to this one have been re-folded
    fold_provider text not null default '',
    fold_stream   text not null default '',
    facts         bigint not null default 0,
    folds         bigint not null default 0,
    started_at    timestamptz not null default now(),
    done_at       timestamptz
);
insert into public.webhook_backfill (until_id, done_at)
select coalesce(max(id), 0), case when max(id) is null then now() end
from public.webhook_deliveries where fact is null
on conflict (only_row) do nothing;
alter table public.webhook_backfill enable row level security;
revoke all on public.webhook_backfill from anon, authenticated;
grant all on public.webhook_backfill to service_role;
