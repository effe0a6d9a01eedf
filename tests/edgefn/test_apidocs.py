"""`edgefn dev`'s API docs, driven in process through the local gateway: the page and
everything it loads come from the server itself, the document is valid and names this
server, and the demo token is explained where it is needed. (tests/browser renders it.)"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser

import httpx
import pytest
from openapi_spec_validator import validate

from edgefn.apidocs import ASSETS_PATH, DOCS_PATH, OPENAPI_PATH, APIDocs
from edgefn.dev import LocalGateway
from edgefn.openapi import build

BASE = "http://127.0.0.1:8123"


class References(HTMLParser):
    """Every URL the page makes the browser load (scripts, stylesheets, icons, images)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name) and tag != "a":
                self.urls.append(a[name] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def docs() -> APIDocs:
    return APIDocs(BASE)


@pytest.fixture
async def client(docs: APIDocs) -> AsyncIterator[httpx.AsyncClient]:
    gateway = LocalGateway({}, {"keys": []}, docs=docs)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url=BASE) as c:
        yield c


async def test_the_page_loads_only_what_this_server_serves(client: httpx.AsyncClient) -> None:
    r = await client.get(DOCS_PATH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = References()
    page.feed(r.text)
    assert page.urls, "the page loads Swagger UI's script and stylesheet"
    for url in page.urls:
        assert url.startswith("/") and not url.startswith("//"), f"{url} is not on this server"
        asset = await client.get(url)
        assert asset.status_code == 200, url
        expected = {".js": "javascript", ".css": "text/css", ".png": "image/png"}[url[url.rindex(".") :]]
        assert expected in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert len(asset.content) > 100
    # the inline start-up script fetches the document from here too
    assert re.findall(r'url: "([^"]+)"', r.text) == [OPENAPI_PATH]
    assert not re.search(r"https?://(?!127\.0\.0\.1:8123)", r.text), "no other host is named in the page"


async def test_the_page_says_how_to_use_the_demo_token(client: httpx.AsyncClient) -> None:
    page = References()
    page.feed((await client.get(DOCS_PATH)).text)
    text = " ".join("".join(page.text).split())
    assert "Authorize" in text and "TOKEN=..." in text and "edgefn token --user" in text
    assert BASE in text


async def test_the_document_is_valid_names_this_server_and_every_route(client: httpx.AsyncClient) -> None:
    r = await client.get(OPENAPI_PATH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    await asyncio.to_thread(validate, doc)  # the validator computes for most of a second: off the loop
    assert doc["servers"] == [{"url": BASE, "description": "this edgefn dev"}]
    assert doc["paths"] == (await asyncio.to_thread(build))["paths"]
    hint = doc["components"]["securitySchemes"]["bearerAuth"]["description"]
    assert "TOKEN=" in hint and "edgefn token" in hint


async def test_only_reads_of_listed_files(client: httpx.AsyncClient) -> None:
    r = await client.post(DOCS_PATH)
    assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    # the package also holds a demo page that loads a document from another host: not served
    for path in (f"{ASSETS_PATH}/index.html", f"{ASSETS_PATH}/swagger-initializer.js", f"{ASSETS_PATH}/../../pyproject.toml"):
        r = await client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "ROUTE_NOT_FOUND", path
    assert (await client.head(f"{ASSETS_PATH}/swagger-ui.css")).status_code == 200
