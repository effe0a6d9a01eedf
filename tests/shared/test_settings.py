from __future__ import annotations

import pytest

from shared.settings import ConfigError, CoreSettings


def test_explicit_over_environment_over_default() -> None:
    env = {"REDIS_TIMEOUT_MS": "75", "KEY_PREFIX": "from-env"}
    s = CoreSettings.load(env=env, key_prefix="explicit")
    assert s.key_prefix == "explicit"
    assert s.redis_timeout_ms == 75
    assert s.db_pool_max == 10


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="REDIS_TIMEOUT_MS"):
        CoreSettings.load(env={"REDIS_TIMEOUT_MS": "soon"})


def test_missing_required_value_names_the_variable() -> None:
    s = CoreSettings.load(env={})
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        s.require("database_url")


def test_issuer_and_jwks_url_derive_from_supabase_url() -> None:
    s = CoreSettings.load(env={"SUPABASE_URL": "https://abc.supabase.co/", "CORS_ORIGINS": "https://a, https://b"})
    assert s.issuer == "https://abc.supabase.co/auth/v1"
    assert s.jwks_url == "https://abc.supabase.co/auth/v1/.well-known/jwks.json"
    assert s.cors_origins == ("https://a", "https://b")
