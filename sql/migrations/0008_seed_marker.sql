-- 0008: the demo-data marker `edgefn seed` writes (at most one row): how many users the
-- database was seeded with, so a second run with the same number does nothing.
-- Operator tooling only: RLS on, no grants to the API roles.

create table if not exists public.edgefn_seed (
    singleton  boolean primary key default true check (singleton),
    users      integer not null check (users > 0),
    counts     jsonb not null default '{}'::jsonb,
    anchor     date not null,
    seeded_at  timestamptz not null default now()
);

alter table public.edgefn_seed enable row level security;
revoke all on public.edgefn_seed from anon, authenticated, service_role;
