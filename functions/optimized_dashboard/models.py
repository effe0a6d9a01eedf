"""Request and response models of optimized-dashboard.

The response is built by `public.spending_dashboard()` (sql/migrations/0010_dashboard.sql)
and passed through as JSON without being parsed; these models document it (OpenAPI) and the
tests validate every response against them (extra fields forbidden), so the SQL and the
documented shape cannot drift apart.

Money is a decimal string with two places ("12.30"), never a float, and always sits next
to its `currency`.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

Range = Literal["week", "month", "quarter", "year"]
Money = Annotated[str, Field(pattern=r"^-?\d+\.\d{2}$", description="exact decimal amount, 2 places", examples=["12.30"])]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code", examples=["USD"])]
Percent = Annotated[float, Field(description="percent, one decimal place")]

USER_ID_REFUSED = "user_id is not accepted: the dashboard is always the signed-in caller's own"


def _refuse_user_id(value: Any) -> Any:
    raise ValueError(USER_ID_REFUSED)


class DashboardQuery(BaseModel):
    """GET parameters. The user is always the caller: a `user_id` is a 400."""

    model_config = ConfigDict(extra="forbid")

    range: Range = Field("month", description="week: the last 7 days; month, quarter, year: the calendar period so far, in the user's time zone")
    include_analytics: bool = Field(True, description="paid and admin tiers: false leaves `analytics` out")
    user_id: SkipJsonSchema[None] = Field(None, exclude=True)

    _no_user_id = field_validator("user_id", mode="before")(_refuse_user_id)


class DashboardBody(BaseModel):
    """POST body, for existing clients (`supabase.functions.invoke` posts): the same fields
    as the GET query. `time_range` is the old name of `range`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    range: Range = Field("month", validation_alias=AliasChoices("range", "time_range"), description="as in the GET query")
    include_analytics: bool = Field(True, description="as in the GET query")
    include_predictions: bool | None = Field(
        None, description="accepted from old clients and ignored: the month-end projection is budget_status.projected_spend"
    )
    user_id: SkipJsonSchema[None] = Field(None, exclude=True)

    _no_user_id = field_validator("user_id", mode="before")(_refuse_user_id)

    def as_query(self) -> DashboardQuery:
        return DashboardQuery(range=self.range, include_analytics=self.include_analytics)


# -- the response -------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RangeInfo(_Out):
    name: Range
    start: datetime
    end: datetime = Field(description="the moment the dashboard was computed at")
    timezone: str = Field(description="the user's time zone the calendar periods follow (UTC when unset or unknown)")


class CurrencyTotal(_Out):
    currency: Currency
    total_spent: Money
    purchases_count: int


class UserStats(_Out):
    currency: Currency = Field(description="the user's currency (profile), the one headline figures are in")
    total_spent: Money = Field(description="spent in the range, in `currency`")
    purchases_count: int = Field(description="purchases in the range, every currency")
    totals_by_currency: list[CurrencyTotal] = Field(description="every currency spent in the range, the user's first")
    active_goals: int
    followed_artists: int
    monthly_average: Money = Field(description="the last 6 complete calendar months / 6, in `currency`")
    spending_trend: Literal["up", "down", "stable"] = Field(
        description="the last 3 complete months against the 3 before, in `currency`: up above +10 % (or from "
        "nothing to something), down below -10 %, else stable"
    )
    trend_change_percent: Percent | None = Field(description="that change; null when the earlier 3 months are zero")


class RecentPurchase(_Out):
    id: str
    amount: Money
    currency: Currency
    category: str
    artist_id: str | None
    artist_name: str | None
    description: str | None
    purchased_at: datetime


class ArtistSpend(_Out):
    artist_id: str | None = Field(description="null: purchases with no artist")
    artist_name: str | None
    currency: Currency
    total_spent: Money
    purchase_count: int
    percentage: Percent = Field(description="share of the range's spend in this currency")


class BudgetStatus(_Out):
    currency: Currency = Field(description="the budget's currency; only purchases in it count against it")
    budget_source: Literal["budget", "profile", "default"]
    monthly_budget: Money
    current_spent: Money = Field(description="this calendar month so far")
    remaining: Money = Field(description="negative when over budget")
    percentage_used: Percent | None = Field(description="null when the budget is 0")
    days_remaining: int = Field(description="days of the month after today")
    projected_spend: Money = Field(description="current_spent + current_spent / days elapsed (today included) x days_remaining")
    alert_level: Literal["low", "medium", "high", "critical"] = Field(
        description="by percentage_used: critical above 90, high above 75, medium above 50"
    )


class Goal(_Out):
    id: str
    title: str
    artist_id: str | None
    artist_name: str | None
    currency: Currency
    target_amount: Money
    current_amount: Money
    remaining_amount: Money
    progress_percent: Percent
    deadline: date | None
    days_left: int | None = Field(description="negative once the deadline has passed")
    priority: int


class CategorySpend(_Out):
    category: str
    currency: Currency
    total_spent: Money
    purchase_count: int
    percentage: Percent


class WeekdaySpend(_Out):
    weekday: int = Field(ge=1, le=7, description="ISO weekday, 1 = Monday, in the user's time zone")
    name: str
    total_spent: Money
    purchase_count: int


class MonthOverMonth(_Out):
    this_month_to_date: Money
    last_month_same_period: Money = Field(description="last month from its first day to the same point")
    last_month_total: Money
    change_percent: Percent | None = Field(description="this month to date against the same period; null when that is zero")


class Analytics(_Out):
    currency: Currency = Field(description="weekday pattern and month over month count purchases in this currency")
    category_breakdown: list[CategorySpend]
    weekday_pattern: list[WeekdaySpend]
    month_over_month: MonthOverMonth


class Dashboard(_Out):
    as_of: datetime
    range: RangeInfo
    user_stats: UserStats
    recent_purchases: list[RecentPurchase] = Field(description="the last 10, newest first, whatever the range")
    artist_breakdown: list[ArtistSpend] = Field(description="per artist id and currency, the user's currency first, by spend")
    budget_status: BudgetStatus
    goals: list[Goal] = Field(description="active goals by priority, then deadline")
    analytics: Analytics | None = Field(None, description="paid and admin tiers only; absent for free")
