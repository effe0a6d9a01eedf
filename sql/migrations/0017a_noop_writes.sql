-- 0017a: an update that changes nothing queues nothing.
--
-- The dashboard's statement-level triggers (0010) enqueued a `dashboard.invalidate` event for
-- every UPDATE statement, whether or not it changed a value: 50 updates setting a purchase's
-- amount to itself gave 50 cache invalidations and 50 realtime sends, and any user can send
-- such updates over the REST API as fast as it answers. Now:
--
--   * touch_updated_at() moves updated_at only when some other column changed, so a no-op
--     update leaves the row exactly as it was;
--   * the statement trigger addresses only the users whose rows differ between the old and
--     the new transition table (EXCEPT ALL over whole rows, both ways: a row updated to
--     itself cancels out), so a statement that changed nothing enqueues nothing, and a bulk
--     update that changed three users' rows out of a thousand addresses those three.
--
-- (The row-level dashboard triggers on profiles and user_tiers already fire only WHEN a
-- watched column IS DISTINCT FROM its old value; deck_profiles' upsert writes only rows that
-- differ.)

create or replace function public.touch_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- compared before updated_at is touched: equal rows mean nothing changed
    if new is distinct from old then
        new.updated_at := pg_catalog.now();
    end if;
    return new;
end
$$;

create or replace function public.dashboard_invalidate_statement() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    ids uuid[];
begin
    if tg_op = 'INSERT' then
        select array_agg(distinct n.user_id) into ids from new_rows n;
    elsif tg_op = 'UPDATE' then
        select array_agg(distinct s.user_id) into ids
        from ((select * from new_rows except all select * from old_rows)
              union all
              (select * from old_rows except all select * from new_rows)) s;
    else
        select array_agg(distinct o.user_id) into ids from old_rows o;
    end if;
    perform public.dashboard_enqueue_invalidation(ids, tg_table_name, tg_op);
    return null;
end
$$;
