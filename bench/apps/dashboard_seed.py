"""The seed app's dashboard approach, as the benchmark's baseline: the same shared stack
(auth, rate limit) but no cache, and sequential queries, each its own round trip, with the
aggregation in Python and floats for money, as the original Deno function did (basic stats
RPC, recent purchases, the range's purchases, then the analytics RPC for paid users).
Run as the user (RLS), not the service role, so the comparison is about the approach.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from typing import Any

from functions.optimized_dashboard.settings import OptimizedDashboardSettings
from shared.app import FunctionApp
from shared.context import RequestContext

fn = FunctionApp("dashboard-seed", settings=OptimizedDashboardSettings)

BASIC = """
select (select tier from public.user_tiers where user_id = auth.uid()) as plan_type,
       (select count(*) from public.artist_follows where user_id = auth.uid()) as artist_count,
       (select count(*) from public.goals where user_id = auth.uid() and status = 'active') as active_goals,
       (select coalesce(sum(amount), 0) from public.purchases
         where user_id = auth.uid() and purchased_at >= date_trunc('month', now())) as monthly_spent
"""
RECENT = """
select p.id, p.amount, p.category, coalesce(a.name, 'Unknown') as artist_name, p.purchased_at, p.description
from public.purchases p left join public.artists a on a.id = p.artist_id
where p.user_id = auth.uid() order by p.purchased_at desc limit 10
"""
IN_RANGE = """
select p.amount, p.artist_id, a.name as artist_name
from public.purchases p left join public.artists a on a.id = p.artist_id
where p.user_id = auth.uid() and p.purchased_at >= %s
"""
ANALYTICS = """
select category, sum(amount) as total, count(*) as n from public.purchases
where user_id = auth.uid() and purchased_at >= %s group by category
"""


def _start(range_: str, now: datetime) -> datetime:
    if range_ == "week":
        return now - timedelta(days=7)
    if range_ == "year":
        return datetime(now.year, 1, 1, tzinfo=UTC)
    if range_ == "quarter":
        return datetime(now.year, 3 * ((now.month - 1) // 3) + 1, 1, tzinfo=UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


@fn.get("/", auth="required")
async def dashboard(ctx: RequestContext) -> Any:
    db, p = ctx.services.db, ctx.principal
    range_ = ctx.request.query_params.get("range", "month")
    now = datetime.now(UTC)
    start = _start(range_, now)
    basic = await db.fetchrow(BASIC, principal=p, read_only=True)
    recent = await db.fetch(RECENT, principal=p, read_only=True)
    rows = await db.fetch(IN_RANGE, (start,), principal=p, read_only=True)
    assert basic is not None
    by_artist: dict[str, dict[str, Any]] = {}
    total = 0.0
    for r in rows:
        name = r["artist_name"] or "Unknown"
        a = by_artist.setdefault(name, {"artist_id": r["artist_id"], "artist_name": name, "total_spent": 0.0, "purchase_count": 0})
        a["total_spent"] += float(r["amount"])
        a["purchase_count"] += 1
        total += float(r["amount"])
    for a in by_artist.values():
        a["percentage"] = a["total_spent"] / total * 100 if total else 0
    budget = 200.0
    spent = float(basic["monthly_spent"])
    days = calendar.monthrange(now.year, now.month)[1]
    pct = spent / budget * 100
    data: dict[str, Any] = {
        "user_stats": {"total_spent": spent, "purchases_count": len(rows), "active_goals": basic["active_goals"]},
        "recent_purchases": recent,
        "artist_breakdown": sorted(by_artist.values(), key=lambda a: -a["total_spent"]),
        "budget_status": {
            "monthly_budget": budget, "current_spent": spent, "remaining": budget - spent, "percentage_used": pct,
            "days_remaining": days - now.day, "projected_spend": spent + spent / now.day * (days - now.day),
            "alert_level": "critical" if pct > 90 else "high" if pct > 75 else "medium" if pct > 50 else "low",
        },
    }
    if basic["plan_type"] in ("paid", "admin"):
        data["analytics"] = await db.fetch(ANALYTICS, (start,), principal=p, read_only=True)
    return data
