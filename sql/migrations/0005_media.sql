-- 0005: media objects stored in R2, one row per object, owned by the uploader.
-- `pending` rows are presigned uploads not yet confirmed; `deleted` rows keep the key
-- until the object is gone from the bucket.

create table if not exists public.media_objects (
    id            uuid primary key default gen_random_uuid(),
    owner_id      uuid not null references auth.users (id) on delete cascade,
    bucket        text not null
                  check (bucket in ('avatars', 'posts', 'products', 'covers', 'backgrounds', 'videos')),
    object_key    text not null unique check (char_length(object_key) between 1 and 1024),
    content_type  text,
    size_bytes    bigint check (size_bytes >= 0),
    status        text not null default 'pending' check (status in ('pending', 'stored', 'deleted')),
    created_at    timestamptz not null default now()
);
-- the owner's objects, newest first, with a stable keyset cursor (created_at, id)
create index if not exists media_objects_owner_idx on public.media_objects (owner_id, created_at desc, id);

alter table public.media_objects enable row level security;
drop policy if exists media_objects_own on public.media_objects;
create policy media_objects_own on public.media_objects for all to authenticated
    using (owner_id = (select auth.uid())) with check (owner_id = (select auth.uid()));

revoke all on public.media_objects from anon, authenticated;
grant select, insert, update, delete on public.media_objects to authenticated;
grant all on public.media_objects to service_role;
