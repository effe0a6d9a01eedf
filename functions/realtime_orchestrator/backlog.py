"""The outbox's backlog, measured after each drain (`FunctionApp.gauge`): how long the
oldest due delivery has waited, which the `outbox-age` alarm watches (infra/alarms.yaml).
Deliveries held for a later batch or digest window are not due yet and do not count."""

from __future__ import annotations

from typing import Any


async def gauges(services: Any) -> dict[str, float]:
    row = await services.db.fetchrow(
        "select coalesce(extract(epoch from now() - min(available_at)), 0)::float8 as age "
        "from public.event_deliveries where status in ('pending', 'leased') and available_at <= now()",
        service=True,
    )
    return {"outbox.oldest_age_s": float(row["age"] if row else 0.0)}
