-- 0021a: the RevenueCat fold looks for TRANSFERs naming one of a purchase's users on every
-- delivery; the keys index of 0021 holds every RevenueCat delivery (each names its users),
-- so that lookup read as many index entries as the users had events. Stream-less
-- deliveries (TRANSFERs, and refunds whose charge has not arrived) are few: their own index.
create index if not exists webhook_deliveries_loose_keys_idx on public.webhook_deliveries using gin (keys)
    where stream is null and keys is not null;
