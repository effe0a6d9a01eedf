"""`edgefn dev`'s /docs in headless Chromium, which resolves no host name: Swagger UI
renders every route of the served document from files the server itself serves, and a
call made from the page with the demo token, as its hint says, succeeds."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.browser.conftest import Browser
from tests.devserver import DevServer

pytestmark = pytest.mark.browser

WAIT_S = 20


def wait(browser: Browser, what: str, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser.driver, WAIT_S, poll_frequency=0.1).until(condition, message=what)


RENDERED = """return Array.from(document.querySelectorAll(".opblock")).map((b) => [
  b.querySelector(".opblock-summary-method").textContent.toUpperCase(),
  b.querySelector(".opblock-summary-path").getAttribute("data-path")])"""


def rendered_operations(browser: Browser) -> set[tuple[str, str]]:
    return {(method, path) for method, path in browser.driver.execute_script(RENDERED)}


@pytest.fixture
def docs(browser: Browser, dev: DevServer) -> Browser:
    browser.open(f"{dev.base}/docs")
    return browser


def test_every_route_renders_from_this_server_alone(docs: Browser, dev: DevServer) -> None:
    from selenium.webdriver.common.by import By

    doc = httpx.get(f"{dev.base}/openapi.json", timeout=10).json()
    expected = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert len(expected) >= 6
    wait(docs, f"Swagger UI to render {len(expected)} operations", lambda _: rendered_operations(docs) == expected)
    loaded = docs.driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert f"{dev.base}/openapi.json" in loaded
    assert [url for url in loaded if not url.startswith(f"{dev.base}/")] == []
    assert [m for m in docs.console() if "SEVERE" in m or "Failed to load" in m] == []
    hint = docs.driver.find_element(By.ID, "token-hint").text
    assert "TOKEN=..." in hint and "Authorize" in hint and dev.base in hint


def test_a_call_from_the_page_with_the_demo_token(docs: Browser, dev: DevServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    def css(selector: str) -> Any:
        return wait(docs, selector, ec.element_to_be_clickable((By.CSS_SELECTOR, selector)))

    css(".auth-wrapper button.authorize").click()
    css(".modal-ux .auth-container input").send_keys(dev.token)
    css(".modal-ux .auth-btn-wrapper button.authorize").click()
    css(".modal-ux button.btn-done").click()

    summary = '.opblock-get .opblock-summary-path[data-path="/functions/v1/optimized-dashboard"]'
    block = css(summary).find_element(By.XPATH, "ancestor::div[contains(@class, 'opblock-get')]")
    docs.driver.execute_script("arguments[0].scrollIntoView()", block)
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait(docs, "Try it out", lambda _: block.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    wait(docs, "Execute", lambda _: block.find_element(By.CSS_SELECTOR, "button.execute")).click()
    status = wait(docs, "the live response", lambda _: block.find_elements(
        By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"))
    assert status[0].text.strip() == "200"
    body = block.find_element(By.CSS_SELECTOR, ".live-responses-table tbody .response-col_description").text
    assert '"success": true' in body and '"budget_status"' in body


def test_the_browser_resolves_no_host_name(docs: Browser, dev: DevServer) -> None:
    """What makes "from this server alone" above true: a file from any named host, a CDN
    or even `localhost`, fails to load; only 127.0.0.1 answers."""
    fetch = """const done = arguments[arguments.length - 1];
      fetch(arguments[0]).then((r) => done(r.status), (e) => done(String(e)))"""
    port = dev.base.rsplit(":", 1)[1]
    assert docs.driver.execute_async_script(fetch, f"{dev.base}/openapi.json") == 200
    assert "Failed to fetch" in docs.driver.execute_async_script(fetch, f"http://localhost:{port}/openapi.json")
    # the reason: the name did not resolve (not, say, CORS: a refusal would name the policy)
    assert [m for m in docs.console() if "localhost" in m and "ERR_NAME_NOT_RESOLVED" in m]
