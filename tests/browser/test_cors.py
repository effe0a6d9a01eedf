"""A web app on another origin, in headless Chromium, calling `edgefn dev` as front ends
do: supabase-js `functions.invoke` with the demo token and a region (so `x-region` rides in
every preflight), an inline multipart upload, a presigned PUT straight to the bucket under
upload-media's README CORS policy, then confirm. And what the browser must refuse: an
origin not in `CORS_ORIGINS`, a header missing from `CORS_ALLOW_HEADERS`, a bucket policy
missing a signed header, a PUT from an origin the bucket does not list."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from functions import FUNCTIONS
from shared.settings import DEFAULT_CORS_ALLOW_HEADERS
from tests.browser.conftest import S3, Browser, Site, dev_env, readme_cors_rules
from tests.devserver import DevServer, start_dev

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("supabase_js")]

REGION = "us-east-1"  # supabase-js FunctionRegion.UsEast1
CORS_REFUSAL = "blocked by CORS policy"


@pytest.fixture
def page(browser: Browser, site: Site, dev: DevServer) -> Browser:
    browser.open(f"{site.allowed}/index.html")
    return browser


def invoke(page: Browser, dev: DevServer, name: str, **options: Any) -> dict[str, Any]:
    return page.call("invoke", dev.base, dev.token, name, {"region": REGION, **options})  # type: ignore[no-any-return]


def ok(result: dict[str, Any]) -> dict[str, Any]:
    """The envelope's data of a successful call, whose exposed headers the page could read."""
    assert result["ok"], result["error"]
    assert result["data"]["success"] is True
    assert result["headers"]["x-request-id"], "x-request-id is exposed to the page"
    return result["data"]["data"]  # type: ignore[no-any-return]


# -- each function through supabase-js ---------------------------------------------------------

SCENARIOS: dict[str, Callable[[Browser, DevServer], None]] = {}


def scenario(name: str) -> Callable[[Callable[[Browser, DevServer], None]], Callable[[Browser, DevServer], None]]:
    def register(fn: Callable[[Browser, DevServer], None]) -> Callable[[Browser, DevServer], None]:
        SCENARIOS[name] = fn
        return fn

    return register


@scenario("optimized-dashboard")
def _dashboard(page: Browser, dev: DevServer) -> None:
    got = invoke(page, dev, "optimized-dashboard?range=week", method="GET")
    assert ok(got)["range"]["name"] == "week"
    assert got["headers"]["etag"] and got["headers"]["ratelimit-remaining"] is not None
    posted = invoke(page, dev, "optimized-dashboard", body={"time_range": "month"})  # the old clients' POST
    assert ok(posted)["range"]["name"] == "month"


@scenario("recommendations")
def _deck(page: Browser, dev: DevServer) -> None:
    deck = ok(invoke(page, dev, "recommendations?limit=5", method="GET"))
    assert 1 <= len(deck["candidates"]) <= 5, deck


@scenario("batch-swipe")
def _swipe(page: Browser, dev: DevServer) -> None:
    [card] = ok(invoke(page, dev, "recommendations?limit=1", method="GET"))["candidates"]
    result = ok(invoke(page, dev, "batch-swipe", body={"swipes": [{"target_id": card["id"], "action": "pass"}]}))
    assert [r["result"] for r in result["results"]] == ["applied"], result


@scenario("realtime-orchestrator")
def _inbox(page: Browser, dev: DevServer) -> None:
    assert "events" in ok(invoke(page, dev, "realtime-orchestrator/inbox?limit=10", method="GET"))


@scenario("upload-media")
def _media(page: Browser, dev: DevServer) -> None:
    assert "items" in ok(invoke(page, dev, "upload-media?limit=5", method="GET"))


@scenario("webhooks")
def _webhooks(page: Browser, dev: DevServer) -> None:
    # providers post webhooks server to server; a browser can only reach its health route
    assert ok(invoke(page, dev, "webhooks/health", method="GET"))["function"] == "webhooks"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_function_through_supabase_js(page: Browser, dev: DevServer, name: str) -> None:
    assert name in SCENARIOS, f"no browser scenario for {name}"
    SCENARIOS[name](page, dev)
    assert not [m for m in page.console() if CORS_REFUSAL in m]


# -- uploads ------------------------------------------------------------------------------------


def test_inline_upload_of_an_image_drawn_in_the_page(page: Browser, dev: DevServer) -> None:
    result = page.call("uploadInline", dev.base, dev.token, "avatars", REGION)
    assert result["status"] == 201, result["error"]
    media = ok(result)
    assert media["content_type"] == "image/png" and media["size_bytes"] == result["sentBytes"]
    assert result["data"]["metadata"]["ignored_fields"] == ["caption"]
    assert result["image"] == {"width": 64, "height": 48}, "the returned URL loads in the page"


def test_presigned_upload_straight_to_the_bucket_then_confirm(page: Browser, dev: DevServer) -> None:
    result = page.call("uploadPresigned", dev.base, dev.token, "posts", REGION)
    ok(result["presign"])
    assert result["put"] == {"ok": True, "status": 200, "etag": result["put"]["etag"]}, result["put"]
    assert result["put"]["etag"], "ETag is exposed by the bucket policy"
    media = ok(result["confirm"])
    assert media["size_bytes"] == result["sentBytes"] and media["content_type"] == "image/png"
    assert result["image"] == {"width": 80, "height": 60}
    listed = ok(invoke(page, dev, "upload-media?bucket=posts", method="GET"))
    assert media["key"] in [item["key"] for item in listed["items"]]


def presign(dev: DevServer, size: int = 16) -> dict[str, Any]:
    """A presigned PUT, asked for outside the browser (the refusals below are the bucket's)."""
    r = httpx.post(
        f"{dev.base}/functions/v1/upload-media/presign", headers={"authorization": f"Bearer {dev.token}"},
        json={"bucket": "posts", "content_type": "image/png", "content_length": size}, timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["data"]  # type: ignore[no-any-return]


def assert_refused_by_cors(result: dict[str, Any], console: list[str]) -> None:
    assert result["ok"] is False and result["status"] is None, result
    assert any(CORS_REFUSAL in m for m in console), console


@pytest.fixture
def restore_bucket_cors(s3: S3, site: Site) -> Iterator[S3]:
    yield s3
    s3.set_cors(readme_cors_rules(site.allowed))


@pytest.mark.parametrize("header", [h.lower() for h in readme_cors_rules("x")[0]["AllowedHeaders"]])
def test_a_bucket_policy_without_a_signed_header_fails_the_put(
    page: Browser, dev: DevServer, restore_bucket_cors: S3, site: Site, header: str
) -> None:
    """The README says every header in its policy is needed: each one, left out, fails."""
    [rule] = readme_cors_rules(site.allowed)
    restore_bucket_cors.set_cors([{**rule, "AllowedHeaders": [h for h in rule["AllowedHeaders"] if h.lower() != header]}])
    target = presign(dev)
    assert_refused_by_cors(page.call("putTo", target["upload_url"], target["headers"], 16), page.console())
    restore_bucket_cors.set_cors(readme_cors_rules(site.allowed))
    target = presign(dev)
    assert page.call("putTo", target["upload_url"], target["headers"], 16) == {"ok": True, "status": 200}


def test_the_bucket_refuses_a_put_from_an_origin_it_does_not_list(
    browser: Browser, site: Site, dev: DevServer
) -> None:
    browser.open(f"{site.other}/index.html")
    target = presign(dev)
    assert_refused_by_cors(browser.call("putTo", target["upload_url"], target["headers"], 16), browser.console())


# -- what the browser must refuse -----------------------------------------------------------------


def test_an_origin_not_allowed_cannot_call(browser: Browser, site: Site, dev: DevServer) -> None:
    browser.open(f"{site.other}/index.html")
    for options in ({"method": "GET"}, {"body": {"range": "week"}}):
        result = browser.call("invoke", dev.base, dev.token, "optimized-dashboard", {"region": REGION, **options})
        assert result["error"]["name"] == "FunctionsFetchError", result
        assert_refused_by_cors(result, browser.console())


@pytest.fixture(scope="module")
def dev_without_x_region(
    site: Site, s3: S3, dev_database: str, dev: DevServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevServer]:
    """A second `edgefn dev` on the same database whose allow-list lacks `x-region`, as
    the default did before: the suite must see what broke then."""
    headers = ",".join(h for h in DEFAULT_CORS_ALLOW_HEADERS if h != "x-region")
    env = dev_env(dev_database, s3, site.allowed, CORS_ALLOW_HEADERS=headers)
    with start_dev(tmp_path_factory.mktemp("dev-no-region"), "--no-seed", env=env) as server:
        yield server


def test_a_header_missing_from_the_allow_list_fails_the_call(page: Browser, dev_without_x_region: DevServer) -> None:
    dev = dev_without_x_region
    without_region = page.call("invoke", dev.base, dev.token, "optimized-dashboard", {"method": "GET"})
    assert ok(without_region)
    with_region = invoke(page, dev, "optimized-dashboard", method="GET")
    assert with_region["error"]["name"] == "FunctionsFetchError", with_region
    assert_refused_by_cors(with_region, page.console())
