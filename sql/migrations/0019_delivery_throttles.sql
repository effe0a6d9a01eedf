-- 0019: throttling has a budget of its own, and the backlog has an age.
--
-- A provider's 429 does not spend one of a delivery's attempts (the provider is not failing,
-- it asks us to slow down), but it must not retry forever either: `throttles` counts the
-- 429s a delivery got, and the drainer makes it dead past MAX_THROTTLES.
--
-- `due_at` is when the delivery was meant to go (routing's plan: now, the end of a batching
-- window or of quiet hours). Retries and pacing move `available_at`, never `due_at`, so
-- now - min(due_at) over what is still undelivered is how far behind delivery is: the
-- backlog age the drain reports and `edgefn outbox status` prints.

alter table public.event_deliveries add column if not exists throttles integer not null default 0;
alter table public.event_deliveries add column if not exists due_at timestamptz;
update public.event_deliveries set due_at = available_at where due_at is null and status in ('pending', 'leased');

create index if not exists event_deliveries_backlog_idx on public.event_deliveries (channel, due_at)
    where status in ('pending', 'leased');
