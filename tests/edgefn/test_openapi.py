from __future__ import annotations

from openapi_spec_validator import validate

from edgefn.openapi import build
from functions import FUNCTIONS


def test_openapi_document_is_valid_and_covers_every_function() -> None:
    doc = build()
    validate(doc)
    for route in FUNCTIONS:
        assert f"/functions/v1/{route}/health" in doc["paths"]
    health = doc["paths"]["/functions/v1/webhooks/health"]["get"]
    assert [p["name"] for p in health["parameters"]] == ["deep"]
    assert "security" not in health
