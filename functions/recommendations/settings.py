"""Settings for recommendations: the shared keys plus this function's own."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings import CoreSettings

Strategy = Literal["auto", "hnsw", "vector_exact", "exact", "score"]


class RecommendationsSettings(CoreSettings):
    deck_strategy: Strategy = "auto"
    """How the deck is ranked (see public.deck in sql/migrations/0011_swipes_and_deck.sql): auto
    picks hnsw for large candidate sets where pgvector is installed, else the exact ranking
    (pgvector's operator, or plain SQL where the extension is missing)"""
    deck_weight_similarity: float = Field(0.6, ge=0)
    """Weight of embedding similarity in the rank: rank = similarity * w_sim + score * w_score
    + recency * w_recency."""
    deck_weight_score: float = Field(0.3, ge=0)
    """Weight of the profile's score in the rank."""
    deck_weight_recency: float = Field(0.1, ge=0)
    """Weight of recent activity in the rank."""
    deck_recency_days: float = Field(30.0, gt=0)
    """Recency falls from 1 (active now) to 0 (active this many days ago or earlier)"""
    deck_hnsw_pool: int = Field(400, ge=40, le=1000)
    """Hnsw: how many nearest embeddings the index is asked for (its ef_search; at most 1000)"""
    deck_exact_radius_km: float = Field(100.0, ge=0)
    """Auto: a deck within this distance is ranked exactly without counting its candidates"""
    deck_exact_max: int = Field(4000, ge=1)
    """Auto, wider decks: from this many candidates on, the exact ranking gives way to hnsw"""
    deck_use_read_replica: bool = False
    """Compute and re-check decks on the read replica (DATABASE_READ_URL) when one is
    configured. Off by default: a lagging replica would not yet see a swipe or a block that
    just committed, and would serve (and cache the ranking of) a deck that still shows that
    person."""
