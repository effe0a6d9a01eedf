"""SQL for the orchestrator. Every time comparison takes `now` from the caller's clock (not
the database's), so quiet hours, batching windows, backoff and leases are testable."""

# -- ingest -----------------------------------------------------------------------------------

INSERT_EVENT = """
insert into public.outbox (event_id, event_type, payload, recipients, available_at)
values (%(event_id)s, %(event_type)s, %(payload)s, %(recipients)s::uuid[], %(now)s)
on conflict (event_id) do nothing
returning id
"""

# -- routing (outbox -> inbox rows and deliveries), one transaction -----------------------------

CLAIM_OUTBOX = """
select id, event_id::text as event_id, event_type, payload, recipients::text[] as recipients,
       actor_id::text as actor_id, created_at
from public.outbox
-- due by our clock or the database's (enqueue_event stamps rows with the database's now())
where processed_at is null and available_at <= greatest(%(now)s, now())
order by available_at, id
limit %(limit)s
for update skip locked
"""

MATCHES_BY_ID = "select id::text as id, user_a::text as a, user_b::text as b from public.matches where id = any(%s::uuid[])"
MATCH_PAIRS = """
select user_a::text as a, user_b::text as b from public.matches
where user_a = any(%(ids)s::uuid[]) and user_b = any(%(ids)s::uuid[])
"""
FOLLOWERS = "select artist_id::text as artist, user_id::text as user_id from public.artist_follows where artist_id = any(%s::uuid[])"
MEDIA_OWNERS = "select id::text as id, owner_id::text as owner from public.media_objects where id = any(%s::uuid[])"

RECIPIENTS = """
select u.id::text as user_id,
       coalesce(t.tier, 'free') as tier,
       coalesce(p.channels, '{}'::jsonb) as channels,
       p.quiet_start, p.quiet_end,
       coalesce(p.timezone, 'UTC') as timezone,
       coalesce((select array_agg(array[d.id::text, d.platform] order by d.created_at)
                 from public.device_tokens d where d.user_id = u.id and d.active), '{}') as devices,
       (select min(e.available_at) from public.event_deliveries e
         where e.user_id = u.id and e.status = 'pending' and e.channel = 'push' and e.priority = 'normal'
           and e.available_at > %(now)s) as open_batch
from public.live_user_ids(%(ids)s::uuid[]) as u(id)
left join public.user_tiers t on t.user_id = u.id
left join public.notification_preferences p on p.user_id = u.id
"""

# The inbox rows and the deliveries in one statement: a Realtime message carries its inbox
# row's id (the client's catch-up cursor). A second routing of the same event adds nothing.
INSERT_ROUTED = """
with inbox as (
    insert into public.user_events (user_id, event_type, payload, event_id, created_at)
    select i.u, i.ty, i.pl, i.e, %(now)s
    from jsonb_to_recordset(%(inbox)s::jsonb) as i(u uuid, ty text, pl jsonb, e uuid)
    on conflict (user_id, event_id) do nothing
    returning id, user_id, event_id
)
insert into public.event_deliveries
    (event_id, channel, target, user_id, event_type, priority, available_at, due_at, payload, event_created_at, created_at)
select x.e, x.c, x.t, x.u, x.ty, x.pr, x.av, x.av,
       case when x.c = 'realtime' then x.pl || jsonb_build_object('id', coalesce(
           inbox.id,
           (select ue.id from public.user_events ue where ue.user_id = x.u and ue.event_id = x.e)))
       else x.pl end,
       x.ec, %(now)s
from jsonb_to_recordset(%(deliveries)s::jsonb)
     as x(e uuid, c text, t text, u uuid, ty text, pr text, av timestamptz, pl jsonb, ec timestamptz, n int)
left join inbox on inbox.user_id = x.u and inbox.event_id = x.e
order by x.n
on conflict (event_id, channel, target) do nothing
"""

MARK_ROUTED = """
update public.outbox o
set processed_at = %s, attempts = o.attempts + 1, last_error = x.err
from jsonb_to_recordset(%s::jsonb) as x(id bigint, err text)
where o.id = x.id
"""

# Which channels have deliveries due (index probes, no rows read)
DUE_CHANNELS = """
select exists (select 1 from public.event_deliveries where channel = 'cache'
                 and status in ('pending', 'leased') and available_at <= %(now)s) as cache,
       exists (select 1 from public.event_deliveries where channel = 'realtime'
                 and status in ('pending', 'leased') and available_at <= %(now)s) as realtime,
       exists (select 1 from public.event_deliveries where channel = 'push'
                 and status in ('pending', 'leased') and available_at <= %(now)s) as push
"""

# -- deliveries ----------------------------------------------------------------------------------

# A lease: the row is `leased` by this drainer until available_at; if the drainer dies, the
# row is due again when the lease expires. SKIP LOCKED: concurrent drainers take disjoint rows.
_CLAIM = """
with due as (
    select id from public.event_deliveries
    where channel = %(channel)s and status in ('pending', 'leased') and available_at <= %(now)s
    order by available_at, id
    limit %(limit)s
    for update skip locked
), claimed as (
    update public.event_deliveries d
    set status = 'leased', lease_owner = %(owner)s, available_at = %(lease_until)s, attempts = d.attempts + 1
    from due where d.id = due.id
    returning d.id, d.event_id::text as event_id, d.target, d.user_id::text as user_id, d.event_type,
              d.priority, d.payload, d.attempts, d.throttles, d.counted
)
"""

CLAIM = _CLAIM + "select * from claimed order by id"

CLAIM_PUSH = _CLAIM + """
select c.*, t.token, t.platform, coalesce(t.active, false) as active,
       coalesce(p.timezone, 'UTC') as timezone, p.push_daily_cap as cap
from claimed c
left join public.device_tokens t on t.id = c.target::uuid
left join public.notification_preferences p on p.user_id = c.user_id::uuid
order by c.id
"""

# Push cap: take up to n of each user's remaining pushes for the day, atomically (0014a).
RESERVE_PUSHES = """
select user_id::text as user_id, granted
from public.reserve_pushes(%s::uuid[], %s::date[], %s::int[], %s::int[])
"""

# The outcome of a claimed batch, and one attempt row per attempted delivery, in one
# statement. Only rows this drainer still holds are touched (a lease that expired and was
# taken over is not overwritten).
FINISH = """
with x as (
    select * from jsonb_to_recordset(%(done)s::jsonb)
        as x(id bigint, status text, available_at timestamptz, uncount int, error text, sent_at timestamptz,
             outcome text, code int, ms real, counted bool, throttled int)
), done as (
    update public.event_deliveries d
    set status = x.status,
        counted = d.counted or x.counted,
        available_at = coalesce(x.available_at, d.available_at),
        attempts = d.attempts - x.uncount,
        throttles = d.throttles + x.throttled,
        last_error = coalesce(x.error, d.last_error),
        sent_at = coalesce(x.sent_at, d.sent_at),
        lease_owner = null
    from x
    where d.id = x.id and d.lease_owner = %(owner)s and d.status = 'leased'
    returning d.id, d.attempts
)
insert into public.event_delivery_attempts (delivery_id, attempt, outcome, status_code, error, at, duration_ms)
select done.id, done.attempts, x.outcome, x.code, x.error, %(now)s, x.ms
from done join x on x.id = done.id
where x.outcome is not null
"""

DEACTIVATE_DEVICES = "update public.device_tokens set active = false where id = any(%s::uuid[]) and active"

NEXT_DUE = """
select min(t) as next from (
    (select min(least(available_at, %(now)s)) as t from public.outbox where processed_at is null)
    union all
    (select min(available_at) from public.event_deliveries where channel = 'realtime' and status in ('pending', 'leased'))
    union all
    (select min(available_at) from public.event_deliveries where channel = 'push' and status in ('pending', 'leased'))
    union all
    (select min(available_at) from public.event_deliveries where channel = 'cache' and status in ('pending', 'leased'))
) s
"""

# How far behind delivery is, per channel: the oldest undelivered delivery that was due
BACKLOG_AGE = """
select channel, extract(epoch from %(now)s - min(due_at)) as age
from public.event_deliveries
where status in ('pending', 'leased') and due_at <= %(now)s
group by channel
"""

# -- inbox (as the user, under RLS) ----------------------------------------------------------------

INBOX_SINCE = """
select id, event_id::text as event_id, event_type, payload, created_at
from public.user_events
where user_id = %(user_id)s and id > %(since)s
order by id
limit %(limit)s
"""
INBOX_LATEST = """
select * from (
    select id, event_id::text as event_id, event_type, payload, created_at
    from public.user_events
    where user_id = %(user_id)s
    order by id desc
    limit %(limit)s
) s order by id
"""
