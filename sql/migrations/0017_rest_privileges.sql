-- 0017: least privilege for the REST API's roles.
--
-- Supabase serves every table and function of `public` to `anon` and `authenticated` with the
-- caller's own JWT, so grants and row level security are the boundary, not our handlers. What
-- the API roles may do after this file is listed, with the reason for each privilege, in
-- tests/sql/privileges.toml; tests/sql/test_privileges.py fails when the database and that
-- list differ (SECURITY.md explains the model).
--
-- Closed here:
--   * profiles: users wrote every column of their own row (score, hidden, deleted_at,
--     last_active_at ...); now only the user-editable columns, by column grants;
--   * media_objects: users inserted and updated their own rows directly, past the upload
--     function's confirm step and its sweep; now upload-media writes them as the service;
--   * profile_embeddings: every row was readable; now the own row only;
--   * functions: Postgres lets PUBLIC execute every new function, and Supabase also grants
--     EXECUTE to anon and authenticated by default, so deck() and the definer helpers were
--     REST endpoints without the functions' rate limits. Every function of `public` is
--     now closed to the API roles; only spending_dashboard() is opened again (below);
--   * sequences and TRUNCATE / REFERENCES / TRIGGER: never granted on purpose, but given by
--     Supabase's default privileges to every new object (setval() on outbox_id_seq would
--     break the outbox); revoked for everything that exists, and for what is created later.

-- -- profiles: column grants ------------------------------------------------------------------

-- What a user writes about themselves. Server-owned: score (ranking), hidden and deleted_at
-- (moderation and account deletion), last_active_at, created_at, updated_at, and the published
-- location cell of 0017a.
revoke insert, update on public.profiles from authenticated;
grant insert (id, display_name, bio, gender, birthdate, interested_in, pref_min_age, pref_max_age,
              lat, lon, photos, monthly_budget, currency, timezone)
    on public.profiles to authenticated;
grant update (display_name, bio, gender, birthdate, interested_in, pref_min_age, pref_max_age,
              lat, lon, photos, monthly_budget, currency, timezone)
    on public.profiles to authenticated;

-- -- media_objects: written by upload-media only --------------------------------------------

-- The function records an object once it has checked it (type sniffed from the bytes, size
-- caps, the owner's prefix), as the service acting for the verified caller; the owner reads.
revoke insert, update, delete on public.media_objects from authenticated;
drop policy if exists media_objects_own on public.media_objects;
drop policy if exists media_objects_select_own on public.media_objects;
create policy media_objects_select_own on public.media_objects for select to authenticated
    using (owner_id = (select auth.uid()));

-- -- profile_embeddings: the own row only -------------------------------------------------------

-- Ranking reads embeddings inside public.deck() (SECURITY DEFINER); no client needs anyone
-- else's, and an embedding of a hidden or deleted profile is still that person's data.
drop policy if exists profile_embeddings_select on public.profile_embeddings;
create policy profile_embeddings_select on public.profile_embeddings for select to authenticated
    using (user_id = (select auth.uid()));

-- -- swipe_requests: read only ---------------------------------------------------------------

-- apply_swipes() writes them as the service; the 0011 policy also admitted writes that no
-- grant allowed. A policy says what it lets through, so it says read.
drop policy if exists swipe_requests_own on public.swipe_requests;
create policy swipe_requests_own on public.swipe_requests for select to authenticated
    using (user_id = (select auth.uid()));

-- -- functions -------------------------------------------------------------------------------

-- Every function of `public` that is ours (extensions' own functions are left as their
-- extension made them): no EXECUTE for PUBLIC, anon or authenticated. Our functions and
-- triggers run them as their owner or as service_role, which keep theirs.
do $$
declare
    f regprocedure;
begin
    for f in
        select p.oid::regprocedure
          from pg_catalog.pg_proc p
         where p.pronamespace = 'public'::regnamespace
           and not exists (select 1 from pg_catalog.pg_depend d
                            where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                              and d.deptype = 'e')
    loop
        execute format('revoke all on function %s from public, anon, authenticated', f);
        execute format('grant execute on function %s to service_role', f);
    end loop;
end
$$;

-- The one function a signed-in user calls over REST: their own dashboard. SECURITY INVOKER
-- (row level security applies to everything it reads) and every read is an index lookup by
-- the caller's id, so it costs what reading one's own rows through the REST API costs.
grant execute on function public.spending_dashboard(text, boolean, numeric, timestamptz) to authenticated;

-- -- sequences, and table privileges nobody needs ----------------------------------------------

revoke all on all sequences in schema public from anon, authenticated;
revoke truncate, references, trigger on all tables in schema public from anon, authenticated;
-- the migration ledger (created before 0001, so Supabase's defaults reached it)
revoke all on public.edgefn_migrations from anon, authenticated;

-- -- and for whatever is created from here on --------------------------------------------------

-- Default privileges of the role that runs migrations: a new table, sequence or function is
-- closed to the API roles until a migration grants what it needs (and the allow-list says
-- why). The schema-level lines undo Supabase's "expose everything" defaults for `public`;
-- EXECUTE for PUBLIC is a built-in default of every schema, so it can only be revoked
-- globally (for functions this role creates anywhere).
alter default privileges in schema public revoke all on tables from anon, authenticated;
alter default privileges in schema public revoke all on sequences from anon, authenticated;
alter default privileges in schema public revoke all on functions from anon, authenticated;
alter default privileges revoke execute on functions from public;
