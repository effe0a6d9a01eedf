"""Settings for optimized-dashboard: the shared keys plus this function's own."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from shared.settings import CoreSettings


class OptimizedDashboardSettings(CoreSettings):
    dashboard_default_monthly_budget: Decimal = Field(Decimal("200"), ge=0)
    """The monthly budget shown to a user who set none (no budgets row, no
    profiles.monthly_budget), in the user's own currency; `budget_source` says `default`."""
    dashboard_use_read_replica: bool = False
    """Compute on the read replica (DATABASE_READ_URL) when one is configured. Off by default: a
    replica that lags behind a write can recompute the old dashboard right after the write
    bumped the version, and that entry would then be served for the TTL."""
