-- 0012: a media row can only name an object under its owner's own prefix.
--
-- upload-media writes keys as `{bucket}/{owner_id}/{time-sortable id}.{ext}`. This check
-- makes that a property of the table, not of the handler: even a buggy or hostile caller
-- of the API (or of PostgREST, which exposes the table under the same RLS policy) cannot
-- record, and so later delete, an object in someone else's prefix.
do $$
begin
    if not exists (
        select 1 from pg_constraint
        where conname = 'media_objects_key_in_owner_prefix' and conrelid = 'public.media_objects'::regclass
    ) then
        alter table public.media_objects add constraint media_objects_key_in_owner_prefix
            check (starts_with(object_key, bucket || '/' || owner_id::text || '/'));
    end if;
end
$$;

