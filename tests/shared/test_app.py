"""The app factory, envelope, routing, validation and CORS, on a tiny app built inline."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ConfigDict, Field

from shared import errors
from shared.app import FunctionApp
from shared.context import RequestContext
from shared.settings import CoreSettings


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(20, ge=1, le=50)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)


def build() -> tuple[FunctionApp, dict[str, int]]:
    calls = {"echo": 0}
    fn = FunctionApp("tiny", settings=CoreSettings)

    @fn.get("/items", auth="public", query=Query)
    async def items(ctx: RequestContext) -> Any:
        calls["echo"] += 1
        ctx.metadata["count"] = ctx.query.limit
        return {"limit": ctx.query.limit}

    @fn.post("/items", auth="public", body=Body, status_code=201, max_body=64)
    async def create(ctx: RequestContext) -> Any:
        return {"name": ctx.body.name}

    @fn.get("/items/{item_id:int}", auth="public")
    async def one(ctx: RequestContext) -> Any:
        if ctx.path_params["item_id"] == "404":
            raise errors.NotFound("no such item", code="ITEM_NOT_FOUND")
        return {"id": int(ctx.path_params["item_id"])}

    @fn.get("/boom", auth="public")
    async def boom(ctx: RequestContext) -> Any:
        raise RuntimeError("secret internals")

    fn.configure(settings=CoreSettings.load(env={}, cors_origins="https://app.example"))
    return fn, calls


@pytest.fixture
async def tiny() -> Any:
    fn, calls = build()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fn), base_url="http://t") as c:
        yield c, calls


async def test_success_envelope_under_prefix_and_root(tiny: Any) -> None:
    c, _ = tiny
    for path in ("/functions/v1/tiny/items?limit=5", "/items?limit=5", "/functions/v1/tiny/items/?limit=5"):
        r = await c.get(path)
        assert r.status_code == 200, path
        assert r.json() == {"success": True, "data": {"limit": 5}, "metadata": {"count": 5}}
        assert r.headers["cache-control"] == "private, no-store"
        assert len(r.headers["x-request-id"]) >= 8


async def test_request_id_is_echoed_when_well_formed(tiny: Any) -> None:
    c, _ = tiny
    r = await c.get("/items", headers={"x-request-id": "client-req-12345"})
    assert r.headers["x-request-id"] == "client-req-12345"
    r = await c.get("/items", headers={"x-request-id": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"


async def test_query_validation_names_the_parameter(tiny: Any) -> None:
    c, calls = tiny
    r = await c.get("/items?limit=500")
    assert r.status_code == 400
    body = r.json()
    assert body["success"] is False
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert "limit" in body["error"]["message"]
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    r = await c.get("/items?user_id=someone-else")
    assert r.status_code == 400 and "user_id" in r.json()["error"]["message"]
    assert calls["echo"] == 0


async def test_the_region_parameter_supabase_js_adds_is_not_input(tiny: Any) -> None:
    """`functions.invoke(name, {region})` appends `forceFunctionRegion` for Supabase's
    gateway; a strict query model must not refuse it (a real Chromium found this)."""
    c, calls = tiny
    r = await c.get("/items?limit=3&forceFunctionRegion=us-east-1")
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"limit": 3}
    r = await c.get("/items?forceFunctionRegion=us-east-1&forceFunctionRegionX=1")
    assert r.status_code == 400 and "forceFunctionRegionX" in r.json()["error"]["message"]
    assert calls["echo"] == 1


async def test_body_errors(tiny: Any) -> None:
    c, _ = tiny
    r = await c.post("/items", content=b"{not json", headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "INVALID_JSON")
    r = await c.post("/items", json={"name": "x" * 100})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")
    r = await c.post("/items", content=b"name=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert (r.status_code, r.json()["error"]["code"]) == (415, "UNSUPPORTED_CONTENT_TYPE")
    r = await c.post("/items", json={"name": ""})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "VALIDATION_ERROR")
    r = await c.post("/items", json={"name": "ok"})
    assert r.status_code == 201 and r.json()["data"] == {"name": "ok"}


async def test_not_found_and_method_not_allowed(tiny: Any) -> None:
    c, _ = tiny
    r = await c.get("/nothing-here")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "ROUTE_NOT_FOUND")
    r = await c.delete("/items")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = await c.get("/items/404")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "ITEM_NOT_FOUND")
    r = await c.get("/items/7")
    assert r.json()["data"] == {"id": 7}


async def test_unhandled_error_is_a_500_envelope_without_internals(tiny: Any) -> None:
    c, _ = tiny
    r = await c.get("/boom")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "INTERNAL_ERROR"
    assert "secret" not in r.text
    assert r.headers["cache-control"] == "private, no-store"


async def test_cors_preflight_and_simple_requests(tiny: Any) -> None:
    c, calls = tiny
    pre = {"origin": "https://app.example", "access-control-request-method": "POST"}
    r = await c.options("/items", headers=pre)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert int(r.headers["access-control-max-age"]) > 0
    assert "authorization" in r.headers["access-control-allow-headers"]
    assert calls["echo"] == 0
    r = await c.options("/items", headers={**pre, "origin": "https://evil.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = await c.get("/items", headers={"origin": "https://app.example"})
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "Origin" in r.headers["vary"]
    r = await c.get("/items", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers and "Origin" in r.headers["vary"]


def test_wildcard_cors_never_sends_credentials() -> None:
    from shared.cors import CORSMiddleware

    mw = CORSMiddleware(None, CoreSettings.load(env={}, cors_origins="*"))  # type: ignore[arg-type]
    resp = mw.preflight("https://anything.example")
    assert resp.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in resp.headers


def test_preflight_allows_every_header_supabase_js_sends_by_default() -> None:
    from shared.cors import CORSMiddleware

    mw = CORSMiddleware(None, CoreSettings.load(env={"CORS_ORIGINS": "https://app.example"}))  # type: ignore[arg-type]
    allowed = {h.strip() for h in mw.preflight("https://app.example").headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "apikey", "content-type", "x-client-info", "x-region", "x-supabase-api-version"} <= allowed


def test_cors_allow_headers_is_configurable() -> None:
    from shared.cors import CORSMiddleware

    env = {"CORS_ORIGINS": "https://app.example", "CORS_ALLOW_HEADERS": "authorization, x-custom-thing"}
    mw = CORSMiddleware(None, CoreSettings.load(env=env))  # type: ignore[arg-type]
    assert mw.preflight("https://app.example").headers["access-control-allow-headers"] == "authorization, x-custom-thing"


def test_start_up_imports_what_the_function_imports_lazily_and_only_that() -> None:
    """A server imports at start-up what a first request would otherwise import on the event
    loop; not what the function cannot reach."""
    from shared.warmup import reachable

    swipes = reachable("functions.batch_swipe", frozenset({"shared.storage", "boto3", "sentry_sdk"}))
    assert {"psycopg", "psycopg_pool", "hiredis", "jwt", "functions.batch_swipe.logic", "shared.pipeline"} <= set(swipes)
    assert not {"boto3", "sentry_sdk", "h2", "functions.upload_media.logic"} & set(swipes)
    media = reachable("functions.upload_media")
    assert {"boto3", "python_multipart.multipart", "shared.storage"} <= set(media)
    assert "h2" in reachable("functions.realtime_orchestrator")  # APNs' HTTP/2, imported inside a function
