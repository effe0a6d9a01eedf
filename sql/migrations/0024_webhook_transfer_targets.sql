-- 0024: a RevenueCat TRANSFER follows earlier stream-less TRANSFERs back by their receiving
-- users (`fact -> 'to'`: B->C looks for a recorded A->B): their own small index.
create index if not exists webhook_deliveries_transfer_to_idx on public.webhook_deliveries
    using gin ((fact -> 'to')) where provider = 'revenuecat' and stream is null and fact is not null;
