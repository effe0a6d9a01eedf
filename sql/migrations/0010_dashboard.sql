-- 0010: the spending dashboard in one database round trip, and how writes reach its cache.
--
-- public.spending_dashboard(range, analytics, default_budget, now) returns the whole
-- dashboard of the CALLER (auth.uid()) as one JSON document. It is SECURITY INVOKER: it runs
-- as the user, so row level security applies to every table it reads, and a user can call
-- it through PostgREST too (rpc) and get exactly their own dashboard.
--
-- Rules it implements (functions/optimized_dashboard/README.md explains them for readers):
--   * periods are calendar periods in the user's time zone (profiles.timezone; UTC when
--     absent or unknown): month, quarter and year start on their first day; week is the
--     last 7 days. A period runs from its start up to now: purchases dated in the future
--     count once their date arrives (they do show in recent_purchases);
--   * money is numeric end to end and leaves as a decimal string with 2 places, always
--     next to its currency. Amounts in different currencies are never added up: the
--     headline figures are in the user's currency (profiles.currency, else USD),
--     totals_by_currency lists every currency spent in the period, and breakdown rows are
--     per (artist or category, currency) with percentages of that currency's total;
--   * budget: budgets.monthly_limit (its own currency), else profiles.monthly_budget (the
--     profile's currency), else p_default_budget in the user's currency ("budget_source"
--     says which). Spent = this calendar month's purchases in the budget's currency;
--     projected = spent + spent / days elapsed (today included) * days remaining (after
--     today); alert level by percent used: critical > 90, high > 75, medium > 50, else low;
--   * monthly average = the last 6 complete calendar months / 6 (months without purchases
--     count as zero); trend compares the last 3 complete months with the 3 before: up when
--     more than 10 % higher (or from zero to something), down when more than 10 % lower,
--     else stable;
--   * analytics only when p_analytics AND the user's recorded tier (user_tiers) is paid or
--     admin: a free user calling the rpc directly cannot unlock it.
--
-- Every table is reached through an index (see the benchmark's EXPLAIN): one range scan of
-- purchases_user_time_idx for every aggregate (its INCLUDE columns answer them), one
-- 10-row scan of the same index for the recent list, and primary-key or partial-index
-- lookups for the rest.

create or replace function public.spending_dashboard(
    p_range text default 'month',
    p_analytics boolean default false,
    p_default_budget numeric default 200,
    p_now timestamptz default null
) returns json
language plpgsql stable
security invoker
set search_path = ''
-- timestamps in the document are rendered in UTC whatever the server's setting
set timezone = 'UTC'
as $$
declare
    uid            uuid := auth.uid();
    now_ts         timestamptz := coalesce(p_now, pg_catalog.now());
    tz             text;
    cur            char(3);
    profile_budget numeric;
    budget         numeric;
    budget_cur     char(3);
    budget_source  text;
    user_tier      text;
    show_analytics boolean;
    local_now      timestamp;
    m0             timestamp;    -- this month's first instant, local time
    month_start    timestamptz;
    range_start    timestamptz;
    m3_start       timestamptz;
    m6_start       timestamptz;
    lm_start       timestamptz;
    lm_same_end    timestamptz;
    since          timestamptz;
    days_in_month  integer;
    day_of_month   integer;
    v_stats        json;
    v_recent       json;
    v_artists      json;
    v_budget       json;
    v_goals        json;
    v_analytics    json;
    v_range        json;
begin
    if uid is null then
        raise exception 'spending_dashboard needs a signed-in user (auth.uid() is null)'
            using errcode = '42501';
    end if;
    if p_range is null or p_range not in ('week', 'month', 'quarter', 'year') then
        raise exception 'unknown range %: use week, month, quarter or year', p_range
            using errcode = '22023';
    end if;

    select p.timezone, p.currency, p.monthly_budget into tz, cur, profile_budget
        from public.profiles p where p.id = uid;
    select b.monthly_limit, b.currency into budget, budget_cur
        from public.budgets b where b.user_id = uid;
    select t.tier into user_tier from public.user_tiers t where t.user_id = uid;

    cur := coalesce(cur, 'USD');
    if budget is not null then
        budget_source := 'budget';
    elsif profile_budget is not null then
        budget := profile_budget; budget_cur := cur; budget_source := 'profile';
    else
        budget := p_default_budget; budget_cur := cur; budget_source := 'default';
    end if;
    show_analytics := coalesce(p_analytics, false) and coalesce(user_tier, 'free') in ('paid', 'admin');

    tz := coalesce(nullif(tz, ''), 'UTC');
    begin
        local_now := now_ts at time zone tz;
    exception when invalid_parameter_value then  -- a time zone Postgres does not know
        tz := 'UTC';
        local_now := now_ts at time zone tz;
    end;

    m0 := date_trunc('month', local_now);
    month_start := m0 at time zone tz;
    range_start := case p_range
        when 'week' then now_ts - interval '7 days'
        when 'month' then month_start
        when 'quarter' then date_trunc('quarter', local_now) at time zone tz
        else date_trunc('year', local_now) at time zone tz
    end;
    m3_start := (m0 - interval '3 months') at time zone tz;
    m6_start := (m0 - interval '6 months') at time zone tz;
    lm_start := (m0 - interval '1 month') at time zone tz;
    -- the same stretch of last month (clamped: 31 March compares with all of February)
    lm_same_end := least((m0 - interval '1 month' + (local_now - m0)) at time zone tz, month_start);
    since := least(range_start, m6_start);
    days_in_month := extract(day from m0 + interval '1 month' - interval '1 day')::integer;
    day_of_month := extract(day from local_now)::integer;

    v_range := json_build_object('name', p_range, 'start', range_start, 'end', now_ts, 'timezone', tz);

    with p as materialized (
        -- every purchase any aggregate needs, from the index alone
        select pu.amount, pu.currency, pu.artist_id, pu.category, pu.purchased_at
        from public.purchases pu
        where pu.user_id = uid and pu.purchased_at >= since and pu.purchased_at <= now_ts
    ),
    r as materialized (
        select amount, currency, artist_id, category, purchased_at from p where purchased_at >= range_start
    ),
    totals as (
        select currency, sum(amount) as total, count(*)::integer as n from r group by currency
    ),
    sums as (
        select
            coalesce(sum(amount) filter (where currency = cur and purchased_at >= m6_start and purchased_at < month_start), 0) as six,
            coalesce(sum(amount) filter (where currency = cur and purchased_at >= m3_start and purchased_at < month_start), 0) as recent3,
            coalesce(sum(amount) filter (where currency = cur and purchased_at >= m6_start and purchased_at < m3_start), 0) as earlier3,
            coalesce(sum(amount) filter (where currency = budget_cur and purchased_at >= month_start), 0) as budget_spent,
            coalesce(sum(amount) filter (where currency = cur and purchased_at >= month_start), 0) as this_month,
            coalesce(sum(amount) filter (where currency = cur and purchased_at >= lm_start and purchased_at < lm_same_end), 0) as lm_same,
            coalesce(sum(amount) filter (where currency = cur and purchased_at >= lm_start and purchased_at < month_start), 0) as lm_total
        from p
    ),
    by_artist as (
        select artist_id, currency, sum(amount) as total, count(*)::integer as n from r group by artist_id, currency
    )
    select
        json_build_object(
            'currency', cur,
            'total_spent', round(coalesce((select t.total from totals t where t.currency = cur), 0), 2)::text,
            'purchases_count', coalesce((select sum(t.n) from totals t), 0)::integer,
            'totals_by_currency', (
                select coalesce(json_agg(json_build_object(
                    'currency', t.currency, 'total_spent', round(t.total, 2)::text, 'purchases_count', t.n)
                    order by t.currency <> cur, t.currency), '[]'::json)
                from totals t),
            'active_goals', (select count(*) from public.goals g where g.user_id = uid and g.status = 'active')::integer,
            'followed_artists', (select count(*) from public.artist_follows f where f.user_id = uid)::integer,
            'monthly_average', round(s.six / 6, 2)::text,
            'spending_trend', case
                when s.recent3 = s.earlier3 then 'stable'
                when s.earlier3 = 0 then 'up'
                when s.recent3 > s.earlier3 * 1.10 then 'up'
                when s.recent3 < s.earlier3 * 0.90 then 'down'
                else 'stable' end,
            'trend_change_percent', case when s.earlier3 > 0
                then round(100 * (s.recent3 - s.earlier3) / s.earlier3, 1) end
        ),
        (
            select coalesce(json_agg(json_build_object(
                'id', x.id, 'amount', round(x.amount, 2)::text, 'currency', x.currency, 'category', x.category,
                'artist_id', x.artist_id,
                'artist_name', (select a.name from public.artists a where a.id = x.artist_id),
                'description', x.description, 'purchased_at', x.purchased_at)
                order by x.purchased_at desc), '[]'::json)
            from (
                select pu.id, pu.amount, pu.currency, pu.category, pu.artist_id, pu.description, pu.purchased_at
                from public.purchases pu where pu.user_id = uid order by pu.purchased_at desc limit 10
            ) x
        ),
        (
            select coalesce(json_agg(json_build_object(
                'artist_id', b.artist_id,
                'artist_name', (select a.name from public.artists a where a.id = b.artist_id),
                'currency', b.currency, 'total_spent', round(b.total, 2)::text, 'purchase_count', b.n,
                'percentage', round(100 * b.total / t.total, 1))
                order by b.currency <> cur, b.currency, b.total desc, b.artist_id nulls last), '[]'::json)
            from by_artist b join totals t on t.currency = b.currency
        ),
        json_build_object(
            'currency', budget_cur,
            'budget_source', budget_source,
            'monthly_budget', round(budget, 2)::text,
            'current_spent', round(s.budget_spent, 2)::text,
            'remaining', round(budget - s.budget_spent, 2)::text,
            'percentage_used', case when budget > 0 then round(100 * s.budget_spent / budget, 1) end,
            'days_remaining', days_in_month - day_of_month,
            'projected_spend', round(s.budget_spent + s.budget_spent / day_of_month * (days_in_month - day_of_month), 2)::text,
            'alert_level', case
                when budget <= 0 then case when s.budget_spent > 0 then 'critical' else 'low' end
                when s.budget_spent > budget * 0.90 then 'critical'
                when s.budget_spent > budget * 0.75 then 'high'
                when s.budget_spent > budget * 0.50 then 'medium'
                else 'low' end
        ),
        (
            select coalesce(json_agg(json_build_object(
                'id', g.id, 'title', g.title, 'artist_id', g.artist_id,
                'artist_name', (select a.name from public.artists a where a.id = g.artist_id),
                'currency', cur,
                'target_amount', round(g.target_amount, 2)::text,
                'current_amount', round(g.current_amount, 2)::text,
                'remaining_amount', round(greatest(g.target_amount - g.current_amount, 0), 2)::text,
                'progress_percent', round(100 * g.current_amount / g.target_amount, 1),
                'deadline', g.deadline,
                'days_left', g.deadline - local_now::date,
                'priority', g.priority)
                order by g.priority, g.deadline nulls last, g.created_at), '[]'::json)
            from public.goals g where g.user_id = uid and g.status = 'active'
        ),
        case when show_analytics then json_build_object(
            'currency', cur,
            'category_breakdown', (
                select coalesce(json_agg(json_build_object(
                    'category', c.category, 'currency', c.currency, 'total_spent', round(c.total, 2)::text,
                    'purchase_count', c.n, 'percentage', round(100 * c.total / t.total, 1))
                    order by c.currency <> cur, c.currency, c.total desc, c.category), '[]'::json)
                from (select category, currency, sum(amount) as total, count(*)::integer as n
                      from r group by category, currency) c
                join totals t on t.currency = c.currency
            ),
            'weekday_pattern', (
                select json_agg(json_build_object(
                    'weekday', d.d,
                    'name', (array['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'])[d.d],
                    'total_spent', round(coalesce(w.total, 0), 2)::text,
                    'purchase_count', coalesce(w.n, 0))
                    order by d.d)
                from generate_series(1, 7) as d(d)
                left join (
                    select extract(isodow from purchased_at at time zone tz)::integer as d,
                           sum(amount) as total, count(*)::integer as n
                    from r where currency = cur group by 1
                ) w on w.d = d.d
            ),
            'month_over_month', json_build_object(
                'this_month_to_date', round(s.this_month, 2)::text,
                'last_month_same_period', round(s.lm_same, 2)::text,
                'last_month_total', round(s.lm_total, 2)::text,
                'change_percent', case when s.lm_same > 0
                    then round(100 * (s.this_month - s.lm_same) / s.lm_same, 1) end
            )
        ) end
    into v_stats, v_recent, v_artists, v_budget, v_goals, v_analytics
    from sums s;

    if v_analytics is null then
        return json_build_object(
            'as_of', now_ts, 'range', v_range, 'user_stats', v_stats, 'recent_purchases', v_recent,
            'artist_breakdown', v_artists, 'budget_status', v_budget, 'goals', v_goals);
    end if;
    return json_build_object(
        'as_of', now_ts, 'range', v_range, 'user_stats', v_stats, 'recent_purchases', v_recent,
        'artist_breakdown', v_artists, 'budget_status', v_budget, 'goals', v_goals, 'analytics', v_analytics);
end
$$;

revoke all on function public.spending_dashboard(text, boolean, numeric, timestamptz) from public, anon;
grant execute on function public.spending_dashboard(text, boolean, numeric, timestamptz) to authenticated, service_role;


-- Invalidation: a write that changes a dashboard, from any client (our functions, the apps
-- through PostgREST, an operator's SQL), puts a `dashboard.invalidate` event in the outbox
-- in the same transaction, addressed to the users whose dashboards changed. The realtime
-- orchestrator drains the outbox; its rule for this event (functions/realtime_orchestrator/
-- rules.py: recipients "self", channels realtime + cache) bumps each recipient's
-- `dashboard:<user id>` version in Redis, so the next read recomputes, and tells the
-- user's open apps to refetch. A user's own transaction can only write (so only name)
-- their own rows; service writes name whoever they touched. payload: {"table", "op"}.
--
-- Statement-level triggers with transition tables: a bulk insert of N rows is one event per
-- 1000 distinct users, not N events. (The seeder's COPY runs with
-- session_replication_role = replica where it may, which fires no triggers at all.)

create or replace function public.dashboard_enqueue_invalidation(ids uuid[], source_table text, op text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
    chunk uuid[];
begin
    for chunk in
        select array_agg(u order by u)
        from (select u, (row_number() over (order by u) - 1) / 1000 as g
              from unnest(ids) as u where u is not null) s
        group by g
    loop
        perform public.enqueue_event(
            'dashboard.invalidate', jsonb_build_object('table', source_table, 'op', lower(op)), chunk);
    end loop;
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
        from (select user_id from new_rows union all select user_id from old_rows) s;
    else
        select array_agg(distinct o.user_id) into ids from old_rows o;
    end if;
    perform public.dashboard_enqueue_invalidation(ids, tg_table_name, tg_op);
    return null;
end
$$;

-- Row-level, for tables whose rows change for other reasons too: only the columns the
-- dashboard reads (profiles is updated on every login, last_active_at).
create or replace function public.dashboard_invalidate_row() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
    -- tg_argv[0] names the owner column (profiles.id, user_tiers.user_id)
    perform public.dashboard_enqueue_invalidation(
        array[(pg_catalog.to_jsonb(new) ->> tg_argv[0])::uuid], tg_table_name, tg_op);
    return null;
end
$$;

revoke all on function public.dashboard_invalidate_statement() from public, anon, authenticated;
revoke all on function public.dashboard_invalidate_row() from public, anon, authenticated;
revoke all on function public.dashboard_enqueue_invalidation(uuid[], text, text) from public, anon, authenticated;

do $$
declare
    t text;
begin
    foreach t in array array['purchases', 'budgets', 'goals', 'artist_follows'] loop
        execute format('drop trigger if exists dashboard_invalidate_ins on public.%I', t);
        execute format('drop trigger if exists dashboard_invalidate_upd on public.%I', t);
        execute format('drop trigger if exists dashboard_invalidate_del on public.%I', t);
        execute format(
            'create trigger dashboard_invalidate_ins after insert on public.%I '
            'referencing new table as new_rows for each statement '
            'execute function public.dashboard_invalidate_statement()', t);
        execute format(
            'create trigger dashboard_invalidate_upd after update on public.%I '
            'referencing old table as old_rows new table as new_rows for each statement '
            'execute function public.dashboard_invalidate_statement()', t);
        execute format(
            'create trigger dashboard_invalidate_del after delete on public.%I '
            'referencing old table as old_rows for each statement '
            'execute function public.dashboard_invalidate_statement()', t);
    end loop;
end
$$;

drop trigger if exists dashboard_invalidate on public.profiles;
create trigger dashboard_invalidate
    after update of monthly_budget, currency, timezone on public.profiles
    for each row
    when (old.monthly_budget is distinct from new.monthly_budget
          or old.currency is distinct from new.currency
          or old.timezone is distinct from new.timezone)
    execute function public.dashboard_invalidate_row('id');

-- The tier decides whether analytics are shown. Webhooks also emit `subscription.changed`,
-- which the orchestrator maps to the same cache scope; this covers a tier set by hand. (No
-- insert trigger: a new user has nothing cached, and user creation stays event-free.)
drop trigger if exists dashboard_invalidate on public.user_tiers;
create trigger dashboard_invalidate
    after update of tier on public.user_tiers
    for each row
    when (old.tier is distinct from new.tier)
    execute function public.dashboard_invalidate_row('user_id');
