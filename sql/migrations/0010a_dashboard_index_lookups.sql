-- 0010a: spending_dashboard() reaches every table by key (user id, artist id), so it runs
-- with sequential scans off. Without this the planner's cost model prefers a sequential
-- scan of a small reference table (artists, 200 rows) for each name lookup: measured on the
-- seeded 100,000-user database, a heavy user's breakdown over 200 artists took 200 scans of
-- the whole table (5.7 ms) instead of 200 primary-key lookups (0.2 ms), and the cost grows
-- with the catalogue. The setting applies inside the function only.
alter function public.spending_dashboard(text, boolean, numeric, timestamptz) set enable_seqscan = off;
