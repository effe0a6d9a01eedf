-- 0010b: spending_dashboard() plans its statements once per connection. PL/pgSQL plans each
-- statement with the call's values ("custom" plans) until it judges a generic plan good
-- enough; for the dashboard's main statement planning costs more than running it (measured
-- on the seeded 100,000-user database: ~3 ms of planning against ~1 ms of execution per
-- call), and its plan does not depend on the values: every access is an index lookup by
-- user id (0010a), whoever the user and whatever the range. The generic plan is built on the
-- first call in a connection and reused; pooled connections live for minutes.
alter function public.spending_dashboard(text, boolean, numeric, timestamptz) set plan_cache_mode = force_generic_plan;
