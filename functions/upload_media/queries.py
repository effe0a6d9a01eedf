"""SQL of upload-media, one round trip each.

Reads run as the caller (row level security: a user sees only their own rows). Writes run
as the service acting for the verified caller (`service=True` with the principal): users
hold no write privilege on `media_objects`, so a row exists only for an object this
function checked. Under the service role row level security does not apply, so every
write names its owner as `auth.uid()` (the verified caller's claims), never a parameter."""

from __future__ import annotations

COLUMNS = "id, bucket, object_key, content_type, size_bytes, status, created_at"

#: record a stored object once: a repeated confirm of the same key returns nothing here and
#: is answered by SELECT_BY_KEY (a concurrent duplicate is not visible to this statement)
INSERT = f"""
insert into public.media_objects (owner_id, bucket, object_key, content_type, size_bytes, status)
values ((select auth.uid()), %(bucket)s, %(key)s, %(content_type)s, %(size)s, 'stored')
on conflict (object_key) do nothing
returning {COLUMNS}
"""

SELECT_BY_KEY = f"select {COLUMNS} from public.media_objects where object_key = %(key)s"

#: newest first; the keyset (created_at desc, id asc) is the order of media_objects_owner_idx
LIST = f"""
select {COLUMNS} from public.media_objects
where owner_id = %(owner)s and status = 'stored'
  and (%(bucket)s::text is null or bucket = %(bucket)s::text)
  and (%(after_at)s::timestamptz is null
       or (created_at <= %(after_at)s::timestamptz
           and (created_at < %(after_at)s::timestamptz or id > %(after_id)s::uuid)))
order by created_at desc, id
limit %(limit)s
"""

#: step 1 of a delete: hide the row and learn its key (a `deleted` row keeps the key until
#: the object is gone, so a failed delete can be retried)
MARK_DELETED = """
update public.media_objects set status = 'deleted'
where id = %(id)s and owner_id = (select auth.uid()) and status in ('stored', 'deleted')
returning object_key
"""

DELETE = "delete from public.media_objects where id = %(id)s and owner_id = (select auth.uid()) and status = 'deleted'"
