"""functions/webhooks/README.md names every configuration key of the function's own."""

from __future__ import annotations

from pathlib import Path

from functions.webhooks.settings import WebhooksSettings
from shared.settings import CoreSettings

README = (Path(__file__).resolve().parents[3] / "functions" / "webhooks" / "README.md").read_text()


def test_every_key_of_the_function_is_in_its_readme() -> None:
    own = set(WebhooksSettings.model_fields) - set(CoreSettings.model_fields)
    assert own, "the scan finds the function's keys"
    missing = sorted(WebhooksSettings.env_name(f) for f in own if f"`{WebhooksSettings.env_name(f)}`" not in README)
    assert missing == []
    for shared in ("BREAKER_FAILURE_THRESHOLD", "BREAKER_RESET_SECONDS"):  # the provider reads' breaker
        assert f"`{shared}`" in README
