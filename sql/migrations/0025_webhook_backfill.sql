-- 0025: deliveries stored before 0021 carry no `fact`, so the fold (0021) could not see
-- them: a refund of such a charge waited forever, and the first new event of an older
-- subscription re-folded it from the new events alone. Reconciliation
-- (functions/webhooks/backfill.py) now records their facts from the stored bodies, a batch
-- per run, then re-folds once each stream they touch. These tables say how far it got. On
-- a database with no such deliveries it starts finished.
--
-- "Stored before 0021": received before 0021 was applied and still without a fact. A
-- delivery received since then that has no fact was ignored or invalid (it folds into
-- nothing), or failed (reconciliation retries it): not the backfill's.
create table if not exists public.webhook_backfill (
    only_row      boolean primary key default true check (only_row),
    legacy_before timestamptz not null,
    -- the newest delivery stored before 0021: nothing after it needs a backfill
    until_id      bigint not null,
    -- phase 1: deliveries up to this id have their facts
    fact_cursor   bigint not null default 0,
    facts         bigint not null default 0,
    -- phase 2 began: webhook_backfill_streams lists what to re-fold
    streams_at    timestamptz,
    started_at    timestamptz not null default now(),
    done_at       timestamptz
);
insert into public.webhook_backfill (legacy_before, until_id, done_at)
select c.cutoff, coalesce(max(d.id), 0), case when max(d.id) is null then now() end
from (select coalesce((select applied_at from public.edgefn_migrations where version = '0021_webhook_fold'),
                      now()) as cutoff) c
left join public.webhook_deliveries d on d.fact is null and d.stream is null and d.received_at < c.cutoff
group by c.cutoff
on conflict (only_row) do nothing;

-- phase 1's record: the deliveries it gave a fact
create table if not exists public.webhook_backfill_rows (
    delivery_id   bigint primary key references public.webhook_deliveries (id) on delete cascade
);

-- phase 2: each stream an old delivery belongs to (or, for a refund or a TRANSFER, joins),
-- re-folded once through its newest delivery; a claim keeps two runs off one stream
create table if not exists public.webhook_backfill_streams (
    provider      text not null,
    stream        text not null,
    tries         integer not null default 0,
    claimed_until timestamptz,
    folded_at     timestamptz,
    last_error    text,
    primary key (provider, stream)
);

alter table public.webhook_backfill enable row level security;
alter table public.webhook_backfill_rows enable row level security;
alter table public.webhook_backfill_streams enable row level security;
revoke all on public.webhook_backfill, public.webhook_backfill_rows, public.webhook_backfill_streams
    from anon, authenticated;
grant all on public.webhook_backfill, public.webhook_backfill_rows, public.webhook_backfill_streams to service_role;
