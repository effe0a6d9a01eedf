"""Origin verification behind CloudFront: without the CDN's secret header nothing is served,
so the client address CloudFront sets cannot be forged by calling the Function URL directly;
two values are accepted while the secret rotates; the deploy files wire it end to end."""

from __future__ import annotations

import asyncio
import copy
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml

from functions import FUNCTIONS
from shared.app import FunctionApp
from shared.context import RequestContext
from shared.auth import secret_matches
from shared.ratelimit import RateRule
from shared.services import Services
from shared.settings import ConfigError, CoreSettings
from tests.conftest import ISSUER, KEY_PREFIX, load_event

ROOT = Path(__file__).resolve().parents[2]
CURRENT = secrets.token_hex(32)
NEXT = secrets.token_hex(32)
BEHIND_CLOUDFRONT = {"trusted_proxy_header": "cloudfront-viewer-address", "origin_verify_secrets": f"{CURRENT},{NEXT}"}


def echo_app(kv: Any = None, **settings: Any) -> tuple[FunctionApp, dict[str, int]]:
    ran = {"n": 0}
    fn = FunctionApp("edge", settings=CoreSettings)

    @fn.get("/whoami", auth="public", rate=RateRule(name="edge", limits={"anonymous": 2}))
    async def whoami(ctx: RequestContext) -> Any:
        ran["n"] += 1
        return {"client_ip": ctx.client_ip}

    @fn.get("/health", auth="public")
    async def health(ctx: RequestContext) -> Any:
        return {"client_ip": ctx.client_ip}

    s = CoreSettings.load(env={}, jwt_issuer=ISSUER, key_prefix=f"{KEY_PREFIX}:edge:{secrets.token_hex(4)}",
                          cors_origins="https://app.example", **settings)
    fn.configure(settings=s, services=Services(s, kv=kv))
    return fn, ran


def client(fn: FunctionApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=fn, client=("130.176.98.12", 443)), base_url="http://t")


# -- settings --------------------------------------------------------------------------------


def test_cloudfront_address_header_is_refused_without_an_origin_secret() -> None:
    with pytest.raises(ConfigError, match="ORIGIN_VERIFY_SECRETS: .*cloudfront-viewer-address"):
        CoreSettings.load(env={"TRUSTED_PROXY_HEADER": "cloudfront-viewer-address"})
    # an appending proxy (Cloud Run's front end) needs none
    assert CoreSettings.load(env={"TRUSTED_PROXY_HEADER": "x-forwarded-for"}).origin_verify_secrets == ()


@pytest.mark.parametrize("value", ["short-secret", ",".join(secrets.token_hex(32) for _ in range(3))])
def test_weak_or_too_many_secrets_fail_at_load_without_echoing_them(value: str) -> None:
    with pytest.raises(ConfigError, match="ORIGIN_VERIFY_SECRETS") as info:
        CoreSettings.load(env={"ORIGIN_VERIFY_SECRETS": value})
    for part in value.split(","):
        assert part not in str(info.value)


def test_exactly_the_configured_values_match() -> None:
    assert secret_matches(CURRENT.encode(), (CURRENT, NEXT)) and secret_matches(NEXT, (CURRENT, NEXT))
    for wrong in (None, b"", CURRENT[:-1].encode(), (CURRENT + "x").encode(), CURRENT.upper().encode(), b"%s,%s" % (CURRENT.encode(), NEXT.encode())):
        assert not secret_matches(wrong, (CURRENT, NEXT)), wrong
    assert not secret_matches("", ("", None))  # an unset secret matches nothing


# -- in process --------------------------------------------------------------------------------


async def test_requests_without_the_cdn_header_are_refused_before_anything_runs(make_kv: Any) -> None:
    kv = make_kv("redis")
    fn, ran = echo_app(kv, **BEHIND_CLOUDFRONT)
    async with client(fn) as c:
        forged = {"cloudfront-viewer-address": "192.0.2.1:1111"}
        for headers in (forged, {**forged, "x-origin-verify": "nope"}, {**forged, "x-origin-verify": CURRENT[:-1]}):
            trips = kv.round_trips
            r = await c.get("/functions/v1/edge/whoami", headers=headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == "ORIGIN_NOT_VERIFIED"
            assert r.headers["cache-control"] == "private, no-store" and len(r.headers["x-request-id"]) >= 8
            assert kv.round_trips == trips  # no Redis, no route
        # a browser's preflight straight to the function is refused too
        pre = await c.options("/functions/v1/edge/whoami", headers={
            "origin": "https://app.example", "access-control-request-method": "GET"})
        assert pre.status_code == 403
        pre = await c.options("/functions/v1/edge/whoami", headers={
            "origin": "https://app.example", "access-control-request-method": "GET", "x-origin-verify": NEXT})
        assert pre.status_code in (200, 204)
    assert ran["n"] == 0


async def test_both_rotation_values_are_accepted_and_the_viewer_address_is_the_identity(make_kv: Any) -> None:
    kv = make_kv("redis")
    fn, ran = echo_app(kv, **BEHIND_CLOUDFRONT)
    async with client(fn) as c:

        async def get(addr: str, secret: str) -> httpx.Response:
            return await c.get("/functions/v1/edge/whoami", headers={"cloudfront-viewer-address": addr, "x-origin-verify": secret})

        a = [await get("198.51.100.1:4000", s) for s in (CURRENT, NEXT, CURRENT)]
        assert [r.status_code for r in a] == [200, 200, 429]  # one address, whichever secret
        assert a[0].json()["data"] == {"client_ip": "198.51.100.1"}
        b = await get("[2001:db8::5]:4000", NEXT)
        assert b.status_code == 200 and b.json()["data"] == {"client_ip": "2001:db8::5"}
    assert ran["n"] == 3


async def test_without_origin_verification_nothing_changes(make_kv: Any) -> None:
    fn, _ = echo_app(make_kv("redis"))
    async with client(fn) as c:
        r = await c.get("/functions/v1/edge/health", headers={"cloudfront-viewer-address": "192.0.2.1:1"})
    assert r.status_code == 200 and r.json()["data"] == {"client_ip": "130.176.98.12"}  # the socket peer


# -- the Lambda entry point, with a Function URL event as CloudFront forwards it ----------------


def invoke(fn: FunctionApp, event: dict[str, Any]) -> dict[str, Any]:
    def call() -> dict[str, Any]:
        loop = asyncio.new_event_loop()  # as in a Lambda runtime's main thread
        asyncio.set_event_loop(loop)
        try:
            ctx = SimpleNamespace(function_name="edge", aws_request_id="req-1", get_remaining_time_in_millis=lambda: 3000)
            return fn.lambda_handler(event, ctx)
        finally:
            loop.close()
            asyncio.set_event_loop(None)

    return call()


async def test_function_url_direct_call_is_refused_and_cloudfront_call_is_served() -> None:
    fn, _ = echo_app(**BEHIND_CLOUDFRONT)
    via_cdn = load_event("function_url_via_cloudfront_get_health.json")
    via_cdn["rawPath"] = via_cdn["requestContext"]["http"]["path"] = "/functions/v1/edge/health"
    via_cdn["headers"]["x-origin-verify"] = CURRENT
    r = await asyncio.to_thread(invoke, fn, via_cdn)
    assert r["statusCode"] == 200 and '"client_ip":"203.0.113.77"' in r["body"]
    # the same request sent to the Function URL directly, claiming any address it likes
    direct = copy.deepcopy(via_cdn)
    del direct["headers"]["x-origin-verify"]
    direct["headers"]["cloudfront-viewer-address"] = "192.0.2.99:1"
    r = await asyncio.to_thread(invoke, fn, direct)
    assert r["statusCode"] == 403 and "ORIGIN_NOT_VERIFIED" in r["body"]


# -- the deploy files --------------------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):
    pass


for _tag in ("!Ref", "!Sub", "!GetAtt"):
    CfnLoader.add_constructor(_tag, lambda loader, node: f"{node.tag} {loader.construct_scalar(node)}")


def test_cdn_sends_the_header_to_every_origin_and_every_deploy_sets_the_secret() -> None:
    header = CoreSettings.model_fields["origin_verify_header"].default
    cdn = yaml.load((ROOT / "infra/cdn/cloudfront.yaml").read_text(), Loader=CfnLoader)  # noqa: S506
    assert cdn["Parameters"]["OriginSecret"]["NoEcho"] is True
    assert cdn["Parameters"]["OriginSecret"]["MinLength"] >= 32
    origins = cdn["Resources"]["Distribution"]["Properties"]["DistributionConfig"]["Origins"]
    assert {o["Id"] for o in origins} == set(FUNCTIONS)
    for o in origins:
        custom = {h["HeaderName"].lower(): h["HeaderValue"] for h in o["OriginCustomHeaders"]}
        assert custom == {header: "!Ref OriginSecret"}, o["Id"]
    # every deploy reads it at init with the stage's other secrets (shared/secrets.py), so
    # neither template holds it; the operator guide lists it among the secret's keys
    sls = yaml.safe_load((ROOT / "serverless.yml").read_text())
    env = sls["provider"]["environment"]
    assert env["TRUSTED_PROXY_HEADER"] == "cloudfront-viewer-address"
    assert "ORIGIN_VERIFY_SECRETS" not in env and env["EDGEFN_SECRETS"] == "aws-secretsmanager:edgefn/${sls:stage}"
    from tests.infra.test_deploy import sam

    sam_env = sam()["Globals"]["Function"]["Environment"]["Variables"]
    assert sam_env["TRUSTED_PROXY_HEADER"] == "cloudfront-viewer-address"
    assert "ORIGIN_VERIFY_SECRETS" not in sam_env and "edgefn/${Stage}" in sam_env["EDGEFN_SECRETS"]
    guide = (ROOT / "infra/README.md").read_text()
    assert "`ORIGIN_VERIFY_SECRETS`" in guide[guide.index("| key | needed by |"):guide.index("2. **Non-secret settings**")]
