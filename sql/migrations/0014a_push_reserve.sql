-- 0014 (cont.): take pushes from users' daily caps in one call (one round trip per drain
-- round instead of a transaction of three statements).
--
-- For each (user, local day, wanted, cap): grant min(wanted, cap - already sent), atomically
-- (rows locked in one order, so concurrent drainers cannot deadlock), and return the grant.

create or replace function public.reserve_pushes(users uuid[], days date[], wanted integer[], caps integer[])
returns table (user_id uuid, granted integer)
language plpgsql volatile security definer
set search_path = ''
as $$
begin
    insert into public.push_daily_counts as c (user_id, day, sent)
    select w.u, w.d, 0 from unnest(users, days) as w(u, d)
    order by w.u, w.d
    on conflict on constraint push_daily_counts_pkey do nothing;

    return query
    with want as (
        select w.u, w.d, w.n, w.cap from unnest(users, days, wanted, caps) as w(u, d, n, cap)
    ), cur as (
        select c.user_id as u, c.day as d, c.sent as before, want.n, want.cap
        from public.push_daily_counts c join want on want.u = c.user_id and want.d = c.day
        order by c.user_id, c.day
        for update of c
    ), upd as (
        update public.push_daily_counts c
        set sent = greatest(cur.before, least(cur.cap, cur.before + cur.n))
        from cur where c.user_id = cur.u and c.day = cur.d
        returning c.user_id, c.sent - cur.before as granted
    )
    select upd.user_id, upd.granted::integer from upd;
end
$$;

revoke all on function public.reserve_pushes(uuid[], date[], integer[], integer[]) from public, anon, authenticated;
grant execute on function public.reserve_pushes(uuid[], date[], integer[], integer[]) to service_role;
