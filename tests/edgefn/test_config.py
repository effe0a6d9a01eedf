"""The configuration reference: every setting described, the committed reference current,
every environment variable the code reads documented, secrets marked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgefn.cli import main
from edgefn.config import function_settings, is_secret, looks_secret, markdown, undocumented
from shared.settings import CoreSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "configuration.md"
#: os.environ.get("X"), os.environ["X"], os.getenv("X"), env.get("X"), env["X"]
ENV_READ = re.compile(r"""(?:environ|getenv|\benv)(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]+)["']""")


def test_every_setting_has_a_description() -> None:
    assert undocumented() == [], "give each field a docstring (the line after it)"


def test_the_committed_reference_is_current() -> None:
    assert REFERENCE.read_text() == markdown(), "run: edgefn config --markdown > docs/configuration.md"


def test_every_key_of_every_function_is_in_the_reference() -> None:
    text = REFERENCE.read_text()
    for cls in function_settings().values():
        for field in cls.model_fields:
            assert f"| `{cls.env_name(field)}` |" in text


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    text = REFERENCE.read_text()
    read: dict[str, str] = {}
    for folder in ("shared", "functions", "edgefn"):
        for path in (ROOT / folder).rglob("*.py"):
            for key in ENV_READ.findall(path.read_text()):
                read.setdefault(key, str(path.relative_to(ROOT)))
    assert {"DATABASE_URL", "EDGEFN_ACCESS_LOG"} <= set(read)  # the scan itself works
    missing = {k: where for k, where in read.items() if f"`{k}`" not in text}
    assert missing == {}, "document these keys (a settings field, or PLATFORM_KEYS)"


def test_keys_once_missing_from_every_readme_are_documented() -> None:
    text = REFERENCE.read_text()
    for key in (
        "PAYSTACK_SECRET_KEY", "PAYSTACK_ALLOWED_IPS", "REVENUECAT_WEBHOOK_AUTH", "REVENUECAT_VERIFY", "KEY_PREFIX",
        "DB_POOL_MAX", "DB_CONNECT_TIMEOUT_S", "DB_STATEMENT_TIMEOUT_MS", "JWT_ISSUER", "JWT_AUDIENCE",
        "SUPABASE_JWKS_URL", "SUPABASE_JWKS", "SUPABASE_SERVICE_ROLE_KEY", "CORS_MAX_AGE", "CORS_ALLOW_HEADERS",
        "RATE_LIMIT_WINDOW_SECONDS", "EDGEFN_ACCESS_LOG", "SENTRY_TRACES_SAMPLE_RATE", "EDGEFN_STAGE",
    ):
        assert f"| `{key}` |" in text, key


def test_secret_looking_keys_are_marked_secret_and_masked(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    unmarked = [f"{name}.{f}" for name, cls in function_settings().items()
                for f in cls.model_fields if looks_secret(f) and not is_secret(cls, f)]
    assert unmarked == [], 'say "(secret)" in the description'
    monkeypatch.setenv("PAYSTACK_SECRET_KEY", "sk_test_do_not_print_me")
    monkeypatch.setenv("KEY_PREFIX", "shown-prefix")
    assert main(["config", "--function", "webhooks"]) == 0
    out = capsys.readouterr().out
    assert "sk_test_do_not_print_me" not in out
    assert re.search(r"^PAYSTACK_SECRET_KEY\s+\*\*\*\*$", out, re.M)
    assert re.search(r"^KEY_PREFIX\s+shown-prefix$", out, re.M)


def test_a_bad_value_names_the_key(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_MAX", "many")
    assert main(["config", "--function", "batch-swipe"]) == 1
    assert "DB_POOL_MAX" in capsys.readouterr().err


def test_the_stage_is_read_from_edgefn_stage_as_deployments_set_it() -> None:
    assert CoreSettings.load(env={"EDGEFN_STAGE": "prod"}).edgefn_stage == "prod"
    assert "stage" not in CoreSettings.model_fields and "STAGE" not in {
        CoreSettings.env_name(f) for f in CoreSettings.model_fields
    }


def test_descriptions_come_from_field_docstrings() -> None:
    class Demo(Settings):
        answer: int = 42
        """The answer."""

    assert Demo.model_fields["answer"].description == "The answer."
