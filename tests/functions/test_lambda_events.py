"""Each function's Lambda entry point, driven with recorded Function URL and API Gateway v2
events (JSON under tests/events/)."""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace

import pytest

from functions import FUNCTIONS
from tests.conftest import load_event


def context() -> SimpleNamespace:
    return SimpleNamespace(function_name="test", aws_request_id="req-1", get_remaining_time_in_millis=lambda: 30000)


def event_for(name: str, route: str) -> dict:
    event = load_event(name)
    path = event["rawPath"].replace("optimized-dashboard", route)
    event["rawPath"] = path
    event["requestContext"]["http"]["path"] = path
    return event


@pytest.mark.parametrize("route", sorted(FUNCTIONS))
@pytest.mark.parametrize("event_name", ["function_url_get_health.json", "apigw_v2_get_health.json"])
def test_health_through_lambda_handler(route: str, event_name: str) -> None:
    module = importlib.import_module(FUNCTIONS[route])
    result = module.handler(event_for(event_name, route), context())
    assert result["statusCode"] == 200
    body = json.loads(result["body"])
    assert body == {"success": True, "data": {"status": "ok", "function": route}, "metadata": {}}
    assert result["headers"]["cache-control"] == "private, no-store"
    assert result["headers"]["content-type"] == "application/json"


def test_function_url_at_root_path_and_unknown_route() -> None:
    module = importlib.import_module(FUNCTIONS["optimized-dashboard"])
    result = module.handler(load_event("function_url_get_health_root.json"), context())
    assert result["statusCode"] == 200
    result = module.handler(load_event("function_url_get_unknown.json"), context())
    assert result["statusCode"] == 404
    assert json.loads(result["body"])["error"]["code"] == "ROUTE_NOT_FOUND"


def test_upstream_request_id_is_not_trusted_blindly_but_kept_when_well_formed() -> None:
    module = importlib.import_module(FUNCTIONS["webhooks"])
    event = event_for("function_url_get_health.json", "webhooks")
    event["headers"]["x-request-id"] = "cf-abcdef123456"
    result = module.handler(event, context())
    assert result["headers"]["x-request-id"] == "cf-abcdef123456"


def test_scheduled_event_runs_the_registered_coroutine_not_mangum() -> None:
    from shared.app import FunctionApp
    from shared.settings import CoreSettings

    fn = FunctionApp("cron", settings=CoreSettings)
    calls = []

    @fn.scheduled
    async def tick(services: object) -> dict:
        calls.append(services)
        return {"ok": True, "drained": 0}

    fn.configure(settings=CoreSettings.load(env={}))
    assert fn.lambda_handler(load_event("eventbridge_scheduled.json"), context()) == {"ok": True, "drained": 0}
    assert calls == [fn.services]
    bare = FunctionApp("plain", settings=CoreSettings)
    assert bare.lambda_handler(load_event("eventbridge_scheduled.json"), context())["ok"] is False
