-- 0004: the fan spending tracker: artists (public reference data), follows, purchases,
-- budgets and goals.

create table if not exists public.artists (
    id          uuid primary key default gen_random_uuid(),
    name        text not null check (char_length(name) between 1 and 200),
    group_name  text,
    image_url   text,
    created_at  timestamptz not null default now()
);
create index if not exists artists_name_idx on public.artists (lower(name));

alter table public.artists enable row level security;
drop policy if exists artists_public_read on public.artists;
create policy artists_public_read on public.artists for select to anon, authenticated using (true);

revoke all on public.artists from anon, authenticated;
grant select on public.artists to anon, authenticated;
grant all on public.artists to service_role;

create table if not exists public.artist_follows (
    user_id     uuid not null references auth.users (id) on delete cascade,
    artist_id   uuid not null references public.artists (id) on delete cascade,
    created_at  timestamptz not null default now(),
    primary key (user_id, artist_id)
);
create index if not exists artist_follows_artist_idx on public.artist_follows (artist_id);

alter table public.artist_follows enable row level security;
drop policy if exists artist_follows_own on public.artist_follows;
create policy artist_follows_own on public.artist_follows for all to authenticated
    using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

revoke all on public.artist_follows from anon, authenticated;
grant select, insert, delete on public.artist_follows to authenticated;
grant all on public.artist_follows to service_role;

create table if not exists public.purchases (
    id            uuid primary key default gen_random_uuid(),
    user_id       uuid not null references auth.users (id) on delete cascade,
    artist_id     uuid references public.artists (id) on delete set null,
    amount        numeric(12, 2) not null check (amount > 0),
    currency      char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    category      text not null
                  check (category in ('album', 'concert', 'merch', 'streaming', 'fanclub', 'photocard', 'other')),
    description   text check (char_length(description) <= 500),
    purchased_at  timestamptz not null default now(),
    created_at    timestamptz not null default now()
);
-- The dashboard reads one user's purchases by time (recent list, this month's total,
-- per-artist and per-category breakdowns): every aggregate is answered from this index
-- alone (index-only scan once the visibility map is set).
-- No index on artist_id: artists are reference data and deleting one (the only query
-- that would need it, for `on delete set null`) is a rare operator action.
create index if not exists purchases_user_time_idx on public.purchases (user_id, purchased_at desc)
    include (amount, artist_id, category, currency);

alter table public.purchases enable row level security;
drop policy if exists purchases_own on public.purchases;
create policy purchases_own on public.purchases for all to authenticated
    using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

revoke all on public.purchases from anon, authenticated;
grant select, insert, update, delete on public.purchases to authenticated;
grant all on public.purchases to service_role;

create table if not exists public.budgets (
    user_id        uuid primary key references auth.users (id) on delete cascade,
    monthly_limit  numeric(12, 2) not null check (monthly_limit >= 0),
    currency       char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    updated_at     timestamptz not null default now()
);

drop trigger if exists budgets_touch on public.budgets;
create trigger budgets_touch before update on public.budgets
    for each row execute function public.touch_updated_at();

alter table public.budgets enable row level security;
drop policy if exists budgets_own on public.budgets;
create policy budgets_own on public.budgets for all to authenticated
    using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

revoke all on public.budgets from anon, authenticated;
grant select, insert, update, delete on public.budgets to authenticated;
grant all on public.budgets to service_role;

create table if not exists public.goals (
    id              uuid primary key default gen_random_uuid(),
    user_id         uuid not null references auth.users (id) on delete cascade,
    artist_id       uuid references public.artists (id) on delete set null,
    title           text not null check (char_length(title) between 1 and 200),
    target_amount   numeric(12, 2) not null check (target_amount > 0),
    current_amount  numeric(12, 2) not null default 0 check (current_amount >= 0),
    status          text not null default 'active' check (status in ('active', 'completed', 'cancelled')),
    deadline        date,
    priority        integer not null default 0,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
create index if not exists goals_active_idx on public.goals (user_id) where status = 'active';
-- all of a user's goals (history, and `on delete cascade` from auth.users)
create index if not exists goals_user_idx on public.goals (user_id, created_at desc);

drop trigger if exists goals_touch on public.goals;
create trigger goals_touch before update on public.goals
    for each row execute function public.touch_updated_at();

alter table public.goals enable row level security;
drop policy if exists goals_own on public.goals;
create policy goals_own on public.goals for all to authenticated
    using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

revoke all on public.goals from anon, authenticated;
grant select, insert, update, delete on public.goals to authenticated;
grant all on public.goals to service_role;
