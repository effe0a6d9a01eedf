"""How a write reaches the dashboard cache. Import this after your own writes:

    from functions.optimized_dashboard.invalidation import invalidate_dashboard

    async with services.db.as_user(principal) as conn:
        await conn.execute("insert into public.purchases ...")
    await invalidate_dashboard(services, user_id)     # after the commit, not inside it

Every cached dashboard response of a user carries that user's version (`dashboard:<id>`,
`version_scope`); bumping it (one Redis INCR) makes the next read recompute. Writes made
straight to the database (the apps through PostgREST) reach the cache through the outbox
instead: 0010_dashboard.sql's triggers enqueue `dashboard.invalidate` for the affected
users, and the realtime orchestrator's rule for it bumps the same scope. The cache TTL
bounds whatever neither path covers (see README.md).

Importing this module loads no client library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.observability import json_log

if TYPE_CHECKING:
    from shared.services import Services

#: the outbox event type the database triggers write
EVENT_TYPE = "dashboard.invalidate"


def version_scope(user_id: str) -> str:
    """The response-cache version scope of one user's dashboard (every range)."""
    return f"dashboard:{user_id}"


async def invalidate_dashboard(services: Services, user_id: str) -> bool:
    """Make the user's next dashboard read fresh. Best effort: a committed write must not
    fail because Redis is unreachable, so an outage is logged and False returned (the
    outbox event, when the write went through the database's triggers, and the TTL still
    bound the staleness)."""
    from shared.kv import KVUnavailable

    try:
        await services.response_cache.bump(version_scope(user_id))
    except KVUnavailable as exc:
        json_log.log("warning", "dashboard invalidation failed", user=user_id, error=repr(exc))
        return False
    return True
