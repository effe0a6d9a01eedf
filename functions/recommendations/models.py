"""Query and response models of recommendations."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Gender = Literal["man", "woman", "nonbinary"]
MAX_LIMIT = 50


class DeckQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(20, ge=1, le=MAX_LIMIT, description=f"Cards per page, 1 to {MAX_LIMIT}")
    gender: Gender | None = Field(None, description="Only this gender (default: the genders in your profile's interested_in)")
    min_age: int | None = Field(None, ge=18, le=120, description="Youngest age shown (default: your profile's preference)")
    max_age: int | None = Field(None, ge=18, le=120, description="Oldest age shown (default: your profile's preference)")
    # the database rounds it down to a distance step, and anything below 5 km up to 5 (0017b)
    max_distance_km: float | None = Field(
        None, ge=0.001, le=20_000,
        description="Only people within this distance of you (0.001 to 20000; rounded down to a distance step, at least 5)",
    )
    cursor: str | None = Field(None, min_length=1, max_length=512, description="next_cursor of the previous page")

    @field_validator("max_age")
    @classmethod
    def _age_range(cls, v: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_age")
        if v is not None and low is not None and v < low:
            raise ValueError("max_age must not be below min_age")
        return v

    def filters(self) -> list[Any]:
        """What a cursor is bound to: the filters, not the page size."""
        return [self.gender, self.min_age, self.max_age, self.max_distance_km]


class Card(BaseModel):
    """The public part of a profile: nothing else about another person leaves the database."""

    id: UUID
    display_name: str | None
    age: int | None = Field(description="In whole years (the birthdate is never sent)")
    distance_km: int | None = Field(
        description="The distance between the two people's ~3 km location cells, rounded up to a step (5, 10, 15, 20, "
        "30, 40, 50, 75, 100, 150, 200 km, then every 100 km); null when either side has no location"
    )
    bio: str | None
    photos: list[dict[str, Any]] = Field(description="Storage references of the profile's photos")


class Deck(BaseModel):
    candidates: list[Card] = Field(description="Best first")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end")
