"""`edgefn seed`: deterministic demo data across every domain, loaded with COPY.

    edgefn seed --users 100000          # ~2,000,000 purchases and ~2,000,000 swipes
    edgefn seed --users 2000 --reset    # replace whatever was seeded before

The same N always gives the same rows (fixed RNG seed; ids derived from row numbers), with
times relative to an anchor (now, truncated to the hour). User n has the id
`00000000-0000-4000-8000-<n as 12 hex digits>`; user 1 is the demo user, with a rich
dataset (purchases across artists, budget, goals, an embedding, matches, a subscription).

Everything is loaded in ONE transaction: a failed run leaves nothing behind. Secondary
indexes of the loaded tables (those no constraint stands on) are dropped before the COPYs
and rebuilt from their own definitions after them, in the same transaction: building an
index once over the loaded rows is far cheaper than maintaining it row by row (for the
HNSW index on embeddings, minutes against seconds). A marker row
(`public.edgefn_seed`) records N: seeding again with the same N does nothing; another N is
refused unless `--reset`, which truncates the seeded tables first (never point that at a
database whose users you want to keep). Where the role may (a superuser), the load sets
`session_replication_role = replica` for its own transaction, so foreign-key triggers do
not re-check rows that are consistent by construction; nothing is disabled beyond it.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from edgefn.cli import CommandError

if TYPE_CHECKING:
    import psycopg

SEED = 20_240_917
DEMO_USER_ID = "00000000-0000-4000-8000-000000000001"
DEMO_USERS = 2000
MAX_USERS = 10_000_000
LOCK_KEY = 0x6564_6765_5345  # pg_advisory_xact_lock key of the seeder
CHUNK_ROWS = 8192
EMBEDDING_DIM = 64

#: seeded user ids live in this range (used by --reset)
USER_ID_MIN = "00000000-0000-4000-8000-000000000000"
USER_ID_MAX = "00000000-0000-4000-8000-ffffffffffff"

#: what --reset empties, children first (CASCADE also reaches tables added later that
#: reference these)
SEEDED_TABLES = (
    "public.user_events",
    "public.device_tokens",
    "public.notification_preferences",
    "public.media_objects",
    "public.subscriptions",
    "public.matches",
    "public.blocks",
    "public.swipes",
    "public.profile_embeddings",
    "public.goals",
    "public.budgets",
    "public.purchases",
    "public.artist_follows",
    "public.artists",
    "public.user_tiers",
    "public.profiles",
    "public.edgefn_seed",
)

# name, lat, lon, timezone, local currency
CITIES = (
    ("Seoul", 37.5665, 126.9780, "Asia/Seoul", "KRW"),
    ("Busan", 35.1796, 129.0756, "Asia/Seoul", "KRW"),
    ("Tokyo", 35.6762, 139.6503, "Asia/Tokyo", "JPY"),
    ("Lagos", 6.5244, 3.3792, "Africa/Lagos", "NGN"),
    ("New York", 40.7128, -74.0060, "America/New_York", "USD"),
    ("Los Angeles", 34.0522, -118.2437, "America/Los_Angeles", "USD"),
    ("London", 51.5074, -0.1278, "Europe/London", "GBP"),
    ("Paris", 48.8566, 2.3522, "Europe/Paris", "EUR"),
)
#: units of each currency per US dollar, and whether it has minor units in practice
RATES = {"USD": (1.0, 2), "KRW": (1350.0, 0), "JPY": (150.0, 0), "NGN": (1500.0, 0), "GBP": (0.8, 2), "EUR": (0.92, 2)}
# category, weight, USD price range, description template
CATEGORIES = (
    ("album", 24, (14, 40), "{group} mini album"),
    ("concert", 7, (60, 260), "{group} concert ticket"),
    ("merch", 18, (10, 90), "{group} official merch"),
    ("streaming", 12, (4, 15), "Streaming subscription"),
    ("fanclub", 6, (20, 55), "{group} fanclub membership"),
    ("photocard", 26, (2, 25), "{name} photocard"),
    ("other", 7, (5, 50), "{group} pop-up store"),
)
GROUP_WORDS_A = ("Star", "Nova", "Lunar", "Crimson", "Velvet", "Neon", "Aurora", "Stellar", "Mystic", "Solar")
GROUP_WORDS_B = ("light", "wave", "bloom", "nine", "hearts", "dream", "rise", "verse")
SYLLABLES = ("Ji", "Min", "Seo", "Ha", "Yu", "Na", "Woo", "Eun", "Da", "Hyun", "Soo", "Jin", "Ra", "Yeon", "Bin", "Chae")
FIRST_NAMES = (
    "Minji", "Hanni", "Dani", "Haerin", "Hyein", "Ada", "Chidi", "Ngozi", "Tunde", "Amara", "Yuki", "Haruto",
    "Sakura", "Ren", "Aoi", "Emma", "Liam", "Olivia", "Noah", "Ava", "Lucas", "Chloe", "Jules", "Camille",
    "Sam", "Alex", "Jordan", "Riley", "Taylor", "Morgan",
)  # fmt: skip
BIOS = (
    "Concert buddy wanted", "Photocard trader", "Here for the music", "Dance covers on weekends",
    "Coffee, albums, repeat", "Lightstick collector", "Ask me about my bias", "New to the city",
)  # fmt: skip
GOAL_TITLES = ("See {group} live", "{group} fanclub renewal", "Complete {group} photocard set",
               "Album collection", "Fan meeting trip")  # fmt: skip
N_GROUPS = 40
MEMBERS_PER_GROUP = 5
N_CLUSTERS = 16
# offsets (in same-city positions) of each user's "neighbours": both sides swipe each other
SYMMETRIC_OFFSETS = (1, 3, 5)


class SeedError(CommandError, RuntimeError):
    """Seeding cannot go ahead as asked; the message says why, in one line."""


def user_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


def _row_id(kind: int, n: int) -> str:
    """Deterministic, ascending ids per table (ascending keys keep index inserts cheap)."""
    return f"{kind:08x}-0000-4000-9000-{n:012x}"


# -- the plan: per-user attributes every table pass agrees on ------------------------------


@dataclass
class Plan:
    users: int
    anchor: datetime
    city: list[int] = field(default_factory=list)
    gender: list[str] = field(default_factory=list)
    age: list[int] = field(default_factory=list)
    currency: list[str] = field(default_factory=list)
    spend: list[float] = field(default_factory=list)  # monthly spend in USD
    budget: list[float | None] = field(default_factory=list)  # monthly budget in USD
    tier: list[str] = field(default_factory=list)
    follows: list[tuple[int, ...]] = field(default_factory=list)  # artist indexes
    cats: list[tuple[int, ...]] = field(default_factory=list)  # favourite category indexes
    hidden: list[bool] = field(default_factory=list)
    deleted: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.anchor_epoch = int(self.anchor.timestamp())
        # timestamps are formatted from lookup tables: one string per day and per minute
        first = self.anchor.date() - timedelta(days=900)
        self._day0 = (datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()) // 86400
        self._days = [(first + timedelta(days=d)).isoformat() for d in range(1400)]  # to ~500 days ahead
        self._mins = [f"{m // 60:02d}:{m % 60:02d}:{(m * 37) % 60:02d}+00" for m in range(1440)]

    def ts(self, seconds_ago: float) -> str:
        t = self.anchor_epoch - int(seconds_ago)
        day, sec = divmod(t, 86400)
        return f"{self._days[int(day - self._day0)]} {self._mins[sec // 60]}"


def _weighted(weights: list[float]) -> Callable[[float], int]:
    """pick(u) -> an index drawn with the given weights, for u uniform in [0, 1)."""
    total = sum(weights)
    cum = list(itertools.accumulate(w / total for w in weights))

    def pick(u: float) -> int:
        return min(bisect.bisect_right(cum, u), len(cum) - 1)

    return pick


def make_plan(users: int, anchor: datetime) -> Plan:
    rng = random.Random(f"{SEED}:plan")
    r = rng.random
    plan = Plan(users, anchor)
    n_cities = len(CITIES)
    group_pick = _weighted([1 / (g + 1) ** 0.8 for g in range(N_GROUPS)])
    cat_pick = _weighted([c[1] for c in CATEGORIES])
    for i in range(users):
        n = i + 1
        c = i % n_cities
        pos = i // n_cities
        gender = "woman" if pos % 2 == 0 else "man"
        if r() < 0.07:
            gender = "nonbinary"
        currency = CITIES[c][4] if r() < 0.75 else "USD"
        tier = "paid" if r() < 0.08 else "free"
        fav = group_pick(r())
        members = [fav * MEMBERS_PER_GROUP + m for m in range(MEMBERS_PER_GROUP)]
        k = 1 + int(r() * 4)
        chosen = set(rng.sample(members, min(k, len(members))))
        for _ in range(int(r() * 4)):
            chosen.add(int(r() * N_GROUPS * MEMBERS_PER_GROUP))
        cats = {cat_pick(r()) for _ in range(3 + int(r() * 2))}
        if n == 1:  # the demo user
            gender, currency, tier, c = "woman", "USD", "paid", 0
            chosen = {0, 1, 2, 5, 6, 10, 15, 22}
            cats = set(range(len(CATEGORIES)))
        elif n == 2:
            tier = "admin"
        plan.city.append(c)
        plan.gender.append(gender)
        plan.age.append(18 + int(27 * r() ** 1.6))
        plan.currency.append(currency)
        spend = 75.0 * (0.4 + 1.6 * r())
        plan.spend.append(spend)
        plan.budget.append(spend * (0.7 + 0.9 * r()) if r() < 0.8 else None)
        plan.tier.append(tier)
        plan.follows.append(tuple(sorted(chosen)))
        plan.cats.append(tuple(sorted(cats)))
        plan.hidden.append(n > 1 and r() < 0.02)
        plan.deleted.append(n > 1 and r() < 0.01)
    plan.spend[0] = 140.0
    plan.budget[0] = 300.0
    return plan


def _money(usd: float, currency: str) -> str:
    rate, digits = RATES[currency]
    value = usd * rate
    if digits == 0:
        step = 100 if currency in ("KRW", "NGN") else 10
        return f"{max(step, round(value / step) * step)}.00"
    return f"{max(0.01, value):.2f}"


# -- table passes: each yields (text chunk for COPY, row count) -----------------------------

Rows = Iterator[tuple[str, int]]


def _chunks(lines: Iterator[str]) -> Rows:
    buf: list[str] = []
    for line in lines:
        buf.append(line)
        if len(buf) >= CHUNK_ROWS:
            yield "".join(buf), len(buf)
            buf = []
    if buf:
        yield "".join(buf), len(buf)


def artist_catalog() -> list[tuple[str, str]]:
    """(stage name, group) of every artist: N_GROUPS groups of MEMBERS_PER_GROUP members."""
    catalog = []
    for g in range(N_GROUPS):
        group = GROUP_WORDS_A[g % len(GROUP_WORDS_A)] + GROUP_WORDS_B[g // len(GROUP_WORDS_A) % len(GROUP_WORDS_B)]
        for m in range(MEMBERS_PER_GROUP):
            a = g * MEMBERS_PER_GROUP + m
            name = SYLLABLES[(a * 7) % len(SYLLABLES)] + SYLLABLES[(a * 11 + 3) % len(SYLLABLES)].lower()
            catalog.append((name, group))
    return catalog


def _artists(plan: Plan, catalog: list[tuple[str, str]]) -> Iterator[str]:
    for a, (name, group) in enumerate(catalog):
        created = plan.ts(86400 * (900 - a))
        yield f"{_artist_id(a)}\t{name}\t{group}\tcovers/artists/{a:03d}.jpg\t{created}\n"


def _artist_id(a: int) -> str:
    return f"00000000-0000-4000-a000-{a:012x}"


def _users(plan: Plan) -> Iterator[str]:
    rng = random.Random(f"{SEED}:users")
    for i in range(plan.users):
        n = i + 1
        email = "demo@example.com" if n == 1 else f"user{n}@example.com"
        created = plan.ts(86400 * (400 + rng.random() * 400))
        deleted = plan.ts(86400 * 3) if plan.deleted[i] else "\\N"
        meta = f'{{"provider": "email", "providers": ["email"], "tier": "{plan.tier[i]}"}}'
        yield f"{user_id(n)}\t{email}\t{created}\t{meta}\t{deleted}\n"


def _profiles(plan: Plan) -> Iterator[str]:
    rng = random.Random(f"{SEED}:profiles")
    r = rng.random
    anchor_ord = plan.anchor.date().toordinal()
    interest = {
        "woman": (["{man}"] * 17 + ["{man,woman}"] * 2 + ["{woman}"]),
        "man": (["{woman}"] * 17 + ["{man,woman}"] * 2 + ["{man}"]),
        "nonbinary": ["{man,woman,nonbinary}"],
    }
    for i in range(plan.users):
        n = i + 1
        uid = user_id(n)
        city = CITIES[plan.city[i]]
        g = plan.gender[i]
        age = plan.age[i]
        name = f"{FIRST_NAMES[int(r() * len(FIRST_NAMES))]} {n}" if n > 1 else "Demo Fan"
        bio = BIOS[int(r() * len(BIOS))]
        birth = date.fromordinal(anchor_ord - int(age * 365.25) - int(r() * 360)).isoformat()
        wants = interest[g][int(r() * len(interest[g]))]
        lo = max(18, age - 4 - int(r() * 4))
        hi = min(99, age + 5 + int(r() * 8))
        lat = city[1] + rng.gauss(0, 0.08)
        lon = city[2] + rng.gauss(0, 0.08)
        score = (r() + r() + r()) / 3 if n > 1 else 0.9
        photos = ", ".join(f'{{"bucket": "avatars", "key": "avatars/{uid}/{p}.jpg"}}' for p in range(1 + int(r() * 4)))
        created = plan.ts(86400 * (400 + r() * 400))
        active = plan.ts(86400 * 60 * r() ** 2)
        deleted = plan.ts(86400 * 3) if plan.deleted[i] else "\\N"
        cur = plan.currency[i]
        usd = plan.budget[i]
        budget = _money(usd, cur) if usd is not None else "\\N"
        yield (
            f"{uid}\t{name}\t{bio}\t{g}\t{birth}\t{wants}\t{lo}\t{hi}\t{lat:.5f}\t{lon:.5f}\t{score:.4f}\t"
            f"[{photos}]\t{'t' if plan.hidden[i] else 'f'}\t{deleted}\t{active}\t{budget}\t{cur}\t{city[3]}\t"
            f"{created}\t{active}\n"
        )


def _user_tiers(plan: Plan) -> Iterator[str]:
    updated = plan.ts(86400 * 30)
    for i in range(plan.users):
        yield f"{user_id(i + 1)}\t{plan.tier[i]}\tseed\t{updated}\n"


def _follows(plan: Plan) -> Iterator[str]:
    rng = random.Random(f"{SEED}:follows")
    for i in range(plan.users):
        uid = user_id(i + 1)
        for a in plan.follows[i]:
            yield f"{uid}\t{_artist_id(a)}\t{plan.ts(86400 * (30 + rng.random() * 500))}\n"


def _embedding_blocks() -> list[list[list[str]]]:
    """blocks[cluster][block] -> 32 pre-formatted 8-dim pieces (centroid + noise). A user's
    64-dim vector joins one piece per block: cheap to build, clustered, practically unique."""
    rng = random.Random(f"{SEED}:embeddings:blocks")
    per_block = EMBEDDING_DIM // 8
    out = []
    for _ in range(N_CLUSTERS):
        centroid = [rng.gauss(0, 1) for _ in range(EMBEDDING_DIM)]
        norm = math.sqrt(sum(x * x for x in centroid))
        centroid = [x / norm for x in centroid]
        cluster = []
        for b in range(8):
            pieces = []
            for _ in range(32):
                vals = [centroid[b * per_block + k] + rng.gauss(0, 0.06) for k in range(per_block)]
                pieces.append(",".join(f"{v:.4f}" for v in vals))
            cluster.append(pieces)
        out.append(cluster)
    return out


def _embeddings(plan: Plan) -> Iterator[str]:
    rng = random.Random(f"{SEED}:embeddings")
    r = rng.random
    blocks = _embedding_blocks()
    updated = plan.ts(86400 * 7)
    for i in range(plan.users):
        if i > 0 and r() < 0.1:
            continue  # about one user in ten has no embedding yet
        cluster = blocks[(plan.follows[i][0] // MEMBERS_PER_GROUP) % N_CLUSTERS if r() < 0.7 else int(r() * N_CLUSTERS)]
        vec = ",".join(cluster[b][int(r() * 32)] for b in range(8))
        yield f"{user_id(i + 1)}\t{{{vec}}}\tseed-v1\t{updated}\n"


def _purchases(plan: Plan, artists: list[tuple[str, str]]) -> Iterator[str]:
    rng = random.Random(f"{SEED}:purchases")
    r = rng.random
    n_artists = len(artists)
    templates = [[c[3].format(name=name, group=group) for name, group in artists] for c in CATEGORIES]
    pid = 0
    year = 86400 * 395
    for i in range(plan.users):
        n = i + 1
        uid = user_id(n)
        cats = plan.cats[i]
        follows = plan.follows[i]
        main = plan.currency[i]
        count = 60 if n == 1 else 8 + int(r() * 25)
        per_purchase = plan.spend[i] * 13 / count  # about the user's monthly spend, every month
        for k in range(count):
            pid += 1
            ci = cats[int(r() * len(cats))]
            cat = CATEGORIES[ci]
            x = r()
            if x < 0.85:
                a = follows[int(r() * len(follows))]
            elif x < 0.95:
                a = int(r() * n_artists)
            else:
                a = -1
            cur = main if main == "USD" or r() < 0.9 else "USD"
            low, high = cat[2]
            usd = min(high, max(low, per_purchase * (0.3 + 1.4 * r())))
            # the demo user bought something in each of the last few weeks
            ago = (k * 86400 * 6 + r() * 86400 * 5) if (n == 1 and k < 8) else r() * year
            when = plan.ts(ago + 60)
            artist = _artist_id(a) if a >= 0 else "\\N"
            desc = templates[ci][a] if a >= 0 else cat[0].capitalize()
            yield f"{_row_id(0x10, pid)}\t{uid}\t{artist}\t{_money(usd, cur)}\t{cur}\t{cat[0]}\t{desc}\t{when}\t{when}\n"


def _budgets(plan: Plan) -> Iterator[str]:
    rng = random.Random(f"{SEED}:budgets")
    for i in range(plan.users):
        usd = plan.budget[i]
        if usd is not None:
            cur = plan.currency[i]
            yield f"{user_id(i + 1)}\t{_money(usd, cur)}\t{cur}\t{plan.ts(86400 * 40 * rng.random())}\n"


def _goals(plan: Plan, artists: list[tuple[str, str]]) -> Iterator[str]:
    rng = random.Random(f"{SEED}:goals")
    r = rng.random
    anchor_ord = plan.anchor.date().toordinal()
    gid = 0
    for i in range(plan.users):
        n = i + 1
        if n > 1 and r() < 0.4:
            continue
        count = 3 if n == 1 else 1 + int(r() * 2.2)
        for k in range(count):
            gid += 1
            a = plan.follows[i][int(r() * len(plan.follows[i]))]
            group = artists[a][1]
            title = GOAL_TITLES[(k + int(r() * 5)) % len(GOAL_TITLES)].format(group=group)
            target_usd = 80 + r() * 600
            progress = r() * 1.15
            status = "completed" if progress >= 1 else ("cancelled" if r() < 0.12 else "active")
            if n == 1:
                status, progress = ("active", 0.35 + 0.25 * k) if k < 2 else ("completed", 1.0)
            cur = plan.currency[i]
            target = _money(target_usd, cur)
            current = _money(target_usd * min(progress, 1.0), cur) if progress > 0.01 else "0"
            deadline = date.fromordinal(anchor_ord + 20 + int(r() * 300)).isoformat()
            created = plan.ts(86400 * (10 + r() * 200))
            yield (
                f"{_row_id(0x20, gid)}\t{user_id(n)}\t{_artist_id(a)}\t{title}\t{target}\t{current}\t{status}\t"
                f"{deadline}\t{k + 1}\t{created}\t{created}\n"
            )


@dataclass
class SwipeOutput:
    matches: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)


def _swipes(plan: Plan, out: SwipeOutput) -> Iterator[str]:
    """About 20 swipes per user, within their city. Each user and their same-city
    neighbours at SYMMETRIC_OFFSETS swipe each other (both directions are decided together,
    so a mutual like becomes exactly one match); the others go to people further ahead in
    the city's ring and are never returned, so no other pair is mutual."""
    rng = random.Random(f"{SEED}:swipes")
    r = rng.random
    n_cities = len(CITIES)
    users = plan.users
    pending: dict[tuple[int, int], tuple[str, float]] = {}  # (target, swiper) -> action, seconds ago
    actions = ("like",) * 55 + ("pass",) * 38 + ("superlike",) * 7
    window = 86400 * 90.0
    mid = 0
    for i in range(users):
        c = i % n_cities
        pos = i // n_cities
        in_city = (users - c + n_cities - 1) // n_cities
        rows: dict[int, tuple[str, float]] = {}
        for off in SYMMETRIC_OFFSETS:
            for j in (pos - off, pos + off):
                if not 0 <= j < in_city:
                    continue
                t = j * n_cities + c
                if t < i:
                    rows[t] = pending.pop((i, t))
                    continue
                mine = actions[int(r() * 100)]
                theirs = actions[int(r() * 100)]
                if i == 0:  # the demo user likes, and is liked by, their neighbours
                    mine = theirs = "like"
                ago_mine, ago_theirs = r() * window, r() * window
                rows[t] = (mine, ago_mine)
                pending[(t, i)] = (theirs, ago_theirs)
                if mine != "pass" and theirs != "pass":
                    mid += 1
                    when = plan.ts(min(ago_mine, ago_theirs))
                    out.matches.append(f"{_row_id(0x30, mid)}\t{user_id(i + 1)}\t{user_id(t + 1)}\t{when}\n")
        half = (in_city - 1) // 2
        lowest = SYMMETRIC_OFFSETS[-1] + 1
        if half >= lowest:
            want = 8 + int(r() * 13)  # plus up to 6 neighbours: about 20 in all
            for _ in range(want * 2):
                if len(rows) >= want + 6:
                    break
                d = lowest + int(r() * (half - lowest + 1))
                t = ((pos + d) % in_city) * n_cities + c
                if t in rows or t == i:
                    continue
                action = actions[int(r() * 100)]
                rows[t] = (action, r() * window)
                if action == "pass" and i > 0 and r() < 0.02:
                    out.blocks.append(f"{user_id(i + 1)}\t{user_id(t + 1)}\t{plan.ts(r() * window)}\n")
        swiper = user_id(i + 1)
        for t in sorted(rows):
            action, ago = rows[t]
            yield f"{swiper}\t{user_id(t + 1)}\t{action}\t{plan.ts(ago)}\n"


def _subscriptions(plan: Plan) -> Iterator[str]:
    rng = random.Random(f"{SEED}:subscriptions")
    r = rng.random
    sid = 0
    for i in range(plan.users):
        n = i + 1
        lapsed = plan.tier[i] == "free" and r() < 0.03
        if plan.tier[i] != "paid" and not lapsed:
            continue
        sid += 1
        paystack = n == 1 or r() < 0.6
        yearly = n > 1 and r() < 0.25
        provider = "paystack" if paystack else "revenuecat"
        ref = f"SUB_seed{n:010d}" if paystack else f"rc_seed_{n:010d}"
        plan_code = ("pro_yearly" if yearly else "pro_monthly") if paystack else "pro_monthly_ios"
        if lapsed:
            status, end = "expired", plan.ts(86400 * (5 + r() * 100))
        else:
            status = "non_renewing" if r() < 0.1 else "active"
            end = plan.ts(-86400 * (1 + r() * (360 if yearly else 29)))
        last = plan.ts(86400 * (1 + r() * 25))
        yield (
            f"{_row_id(0x40, sid)}\t{user_id(n)}\t{provider}\t{ref}\t{plan_code}\tpaid\t{status}\t{end}\t"
            f"{last}\t{last}\t{last}\n"
        )


def _demo_extras(plan: Plan) -> dict[str, tuple[str, list[str]]]:
    uid = DEMO_USER_ID
    day = plan.ts(86400)
    return {
        "public.media_objects": (
            "id, owner_id, bucket, object_key, content_type, size_bytes, status, created_at",
            [
                f"{_row_id(0x50, k + 1)}\t{uid}\t{b}\t{b}/{uid}/{k}.{ext}\t{ct}\t{size}\tstored\t{day}\n"
                for k, (b, ext, ct, size) in enumerate(
                    [("avatars", "jpg", "image/jpeg", 48_213), ("posts", "png", "image/png", 512_000),
                     ("covers", "webp", "image/webp", 210_442)]  # fmt: skip
                )
            ],
        ),
        "public.notification_preferences": (
            "user_id, channels, quiet_start, quiet_end, timezone, push_daily_cap, updated_at",
            [f'{uid}\t{{"push": {{"match": true, "budget_alert": true}}}}\t22:00\t07:30\tAsia/Seoul\t20\t{day}\n'],
        ),
        "public.device_tokens": (
            "id, user_id, platform, token, active, created_at, last_seen_at",
            [f"{_row_id(0x60, 1)}\t{uid}\tfcm\tseed-demo-fcm-token\tt\t{day}\t{day}\n"],
        ),
        "public.user_events": (
            "user_id, event_type, payload, created_at",
            [f'{uid}\twelcome\t{{"message": "Welcome to the demo"}}\t{day}\n'],
        ),
    }


# -- loading ---------------------------------------------------------------------------------


def _copy(cur: psycopg.Cursor[Any], table: str, columns: str, rows: Rows) -> int:
    total = 0
    with cur.copy(f"copy {table} ({columns}) from stdin") as cp:
        for chunk, count in rows:
            cp.write(chunk)
            total += count
    return total


def _drop_secondary_indexes(cur: psycopg.Cursor[Any], tables: list[str]) -> list[str]:
    """Drop the indexes of `tables` that no constraint uses (primary keys and unique
    constraints stay, so the load is still checked); return their definitions, to run after
    the load."""
    rows = cur.execute(
        """
        select i.indexrelid::regclass::text, pg_catalog.pg_get_indexdef(i.indexrelid)
        from pg_catalog.pg_index i
        where i.indrelid = any(%s::regclass[])
          and not exists (select 1 from pg_catalog.pg_constraint c where c.conindid = i.indexrelid)
        order by 1
        """,
        (sorted(set(tables)),),
    ).fetchall()
    for name, _ in rows:
        cur.execute(f"drop index {name}")
    return [definition for _, definition in rows]


def _connect(dsn: str) -> psycopg.Connection[Any]:
    import psycopg

    try:
        return psycopg.connect(dsn, connect_timeout=10, prepare_threshold=None)
    except psycopg.ProgrammingError as exc:  # unparsable; its message may echo a password
        raise SeedError("the database URL is not a valid Postgres connection string") from exc
    except psycopg.Error as exc:
        raise SeedError(f"cannot connect to the database: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _marker(cur: psycopg.Cursor[Any]) -> tuple[int, dict[str, int]] | None:
    cur.execute("select users, counts from public.edgefn_seed")
    row = cur.fetchone()
    return (int(row[0]), dict(row[1])) if row else None


def _default_anchor() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def seed(
    dsn: str,
    users: int,
    *,
    reset: bool = False,
    anchor: datetime | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Load the demo dataset for `users` users; return the row count per table. Does nothing
    (and returns the recorded counts) when the database was already seeded with `users`."""
    import psycopg
    from psycopg.types.json import Jsonb

    if not 1 <= users <= MAX_USERS:
        raise SeedError(f"--users must be between 1 and {MAX_USERS:,}")
    anchor = (anchor or _default_anchor()).astimezone(UTC)
    say = log or (lambda _msg: None)
    counts: dict[str, int] = {}
    with _connect(dsn) as conn:
        try:
            cur = conn.cursor()
            cur.execute("select pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            if cur.execute("select to_regclass('public.edgefn_seed')").fetchone() == (None,):
                raise SeedError("the database is not migrated (run `edgefn migrate` first)")
            marker = _marker(cur)
            if marker and marker[0] == users and not reset:
                say(f"already seeded with {users:,} users: nothing to do")
                return marker[1]
            if marker and not reset:
                raise SeedError(
                    f"the database is already seeded with {marker[0]:,} users; pass --reset to replace them"
                )
            foreign = cur.execute("select exists (select 1 from auth.users)").fetchone()
            if not marker and not reset and foreign != (False,):
                raise SeedError("the database already has users that edgefn seed did not create; pass --reset")
            cur.execute("set local statement_timeout = 0")
            cur.execute("set local synchronous_commit = off")
            if reset:
                started = time.perf_counter()
                cur.execute(f"truncate {', '.join(SEEDED_TABLES)} cascade")
                cur.execute("delete from auth.users where id between %s and %s", (USER_ID_MIN, USER_ID_MAX))
                say(f"reset: emptied the seeded tables in {time.perf_counter() - started:.1f}s")
            try:  # skip re-checking foreign keys of rows built consistent (superuser only)
                with conn.transaction():
                    cur.execute("set local session_replication_role = replica")
            except psycopg.errors.InsufficientPrivilege:
                pass

            plan = make_plan(users, anchor)
            artists = artist_catalog()
            swipe_out = SwipeOutput()
            passes: list[tuple[str, str, Callable[[], Iterator[str]]]] = [
                ("auth.users", "id, email, created_at, raw_app_meta_data, deleted_at", lambda: _users(plan)),
                (
                    "public.profiles",
                    "id, display_name, bio, gender, birthdate, interested_in, pref_min_age, pref_max_age, lat, lon, "
                    "score, photos, hidden, deleted_at, last_active_at, monthly_budget, currency, timezone, "
                    "created_at, updated_at",
                    lambda: _profiles(plan),
                ),
                ("public.user_tiers", "user_id, tier, source, updated_at", lambda: _user_tiers(plan)),
                ("public.artists", "id, name, group_name, image_url, created_at", lambda: _artists(plan, artists)),
                ("public.artist_follows", "user_id, artist_id, created_at", lambda: _follows(plan)),
                ("public.profile_embeddings", "user_id, embedding, model, updated_at", lambda: _embeddings(plan)),
                (
                    "public.purchases",
                    "id, user_id, artist_id, amount, currency, category, description, purchased_at, created_at",
                    lambda: _purchases(plan, artists),
                ),
                ("public.budgets", "user_id, monthly_limit, currency, updated_at", lambda: _budgets(plan)),
                (
                    "public.goals",
                    "id, user_id, artist_id, title, target_amount, current_amount, status, deadline, priority, "
                    "created_at, updated_at",
                    lambda: _goals(plan, artists),
                ),
                ("public.swipes", "swiper_id, target_id, action, created_at", lambda: _swipes(plan, swipe_out)),
                ("public.matches", "id, user_a, user_b, created_at", lambda: iter(swipe_out.matches)),
                ("public.blocks", "blocker_id, blocked_id, created_at", lambda: iter(swipe_out.blocks)),
                (
                    "public.subscriptions",
                    "id, user_id, provider, provider_ref, plan_code, tier, status, current_period_end, "
                    "last_event_at, created_at, updated_at",
                    lambda: _subscriptions(plan),
                ),
            ]
            for table, (columns, rows) in _demo_extras(plan).items():
                passes.append((table, columns, lambda rows=rows: iter(rows)))  # type: ignore[misc]
            deferred = _drop_secondary_indexes(cur, [table for table, _, _ in passes])
            for table, columns, make_rows in passes:
                started = time.perf_counter()
                counts[table] = _copy(cur, table, columns, _chunks(make_rows()))
                say(f"{table}: {counts[table]:,} rows in {time.perf_counter() - started:.1f}s")
            started = time.perf_counter()
            cur.execute("set local maintenance_work_mem = '512MB'")
            for definition in deferred:
                t = time.perf_counter()
                cur.execute(definition)
                say(f"  {definition.split(' ON ')[0].split()[-1]}: {time.perf_counter() - t:.1f}s")
            say(f"indexes: {len(deferred)} built after the load in {time.perf_counter() - started:.1f}s")
            cur.execute(
                "insert into public.edgefn_seed (users, counts, anchor) values (%s, %s, %s)",
                (users, Jsonb(counts), anchor.date()),
            )
            conn.commit()
        except SeedError:
            conn.rollback()
            raise
        except psycopg.Error as exc:
            conn.rollback()
            raise SeedError(f"seeding failed: {_first_line(exc)}") from exc
        # fresh statistics for the planner, and a visibility map so index-only scans (the
        # dashboard's) work from the start
        started = time.perf_counter()
        conn.autocommit = True
        conn.execute(f"vacuum (analyze) {', '.join(['auth.users', *counts])}")
        say(f"vacuum analyze: {time.perf_counter() - started:.1f}s")
    return counts


def seed_demo(dsn: str) -> None:
    """The small demo dataset the local server loads on every start: a no-op (one query)
    when the database is already seeded, with any N, or holds users of its own."""
    import psycopg

    with _connect(dsn) as conn:
        try:
            row = conn.execute(
                "select exists (select 1 from public.edgefn_seed) or exists (select 1 from auth.users)"
            ).fetchone()
        except psycopg.Error as exc:
            raise SeedError(f"cannot read the seed marker: {_first_line(exc)}") from exc
    if row == (True,):
        return
    seed(dsn, DEMO_USERS)  # a concurrent start that got there first makes this a no-op


# -- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=DEMO_USERS, help=f"number of users (default {DEMO_USERS})")
    parser.add_argument(
        "--database-url", default=None,
        help="Postgres DSN (default: DATABASE_URL, else the database of the `edgefn dev` running in --data-dir)",
    )
    parser.add_argument(
        "--data-dir", default=".edgefn", help="the data folder of a running `edgefn dev` (default .edgefn)"
    )
    parser.add_argument(
        "--reset", action="store_true", help="truncate the seeded tables first (destroys their data)"
    )


def _database_url(args: argparse.Namespace) -> str:
    """--database-url, else DATABASE_URL, else the running local server's database."""
    from edgefn.devstate import database_url

    return database_url(args.database_url, args.data_dir)


def run(args: argparse.Namespace) -> int:
    dsn = _database_url(args)
    started = time.perf_counter()
    lines: list[str] = []

    def log(message: str) -> None:
        lines.append(message)
        print(message, flush=True)

    counts = seed(dsn, args.users, reset=args.reset, log=log)
    if not any(line.startswith("already seeded") for line in lines):
        total = sum(counts.values())
        print(f"seeded {args.users:,} users: {total:,} rows in {time.perf_counter() - started:.1f}s")
    return 0
