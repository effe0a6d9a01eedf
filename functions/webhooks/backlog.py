"""The webhooks' backlog, measured after each reconciliation (`FunctionApp.gauge`): stored
deliveries still waiting to be applied, which the `webhook-backlog` alarm watches
(infra/alarms.yaml). The same selection as the reconciliation's."""

from __future__ import annotations

from typing import Any


async def gauges(services: Any) -> dict[str, float]:
    row = await services.db.fetchrow(
        "select count(*) as pending from public.webhook_deliveries "
        "where outcome in ('received', 'pending', 'failed') and attempts < %s",
        (services.settings.webhook_max_attempts,), service=True,
    )
    return {"webhooks.pending": float(row["pending"] if row else 0)}
