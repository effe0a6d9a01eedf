"""A real browser against the real local server: headless Chromium (Debian's `chromium`
and `chromium-driver`, driven by selenium) opens a page served on another origin, which
calls `edgefn dev` through supabase-js (bundled here from npm, see `jsbundle`) and PUTs to
the S3 stand-in (moto's server, with the bucket CORS policy from upload-media's README).

Where Chromium, its driver or npm is missing, or Chromium does not start, every test here
is skipped with the reason (shown in the run's summary). Chromium resolves no host name
(`--host-resolver-rules`): whatever a page loads must come from 127.0.0.1. Everything here
is package-scoped: Chromium, the servers and their processes stop when this folder's tests
are done, not at the end of the whole run.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import jsbundle
from tests.devserver import DevServer, clean_env, free_port, start_dev
from tests.factories import scratch_database

REPO = Path(__file__).resolve().parents[2]
PAGE = Path(__file__).parent / "page"
UPLOAD_README = REPO / "functions" / "upload_media" / "README.md"
BUCKET = "media"
S3_KEY = "browser-suite"
#: the flags that work on this project's machines (no sandbox as root, no background
#: connections to the closed network), plus: resolve no host name at all
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
SCRIPT_TIMEOUT_S = 30


# -- the browser ------------------------------------------------------------------------------


def _binaries() -> tuple[str, str]:
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if not p)
        pytest.skip(f"browser suite: {missing} not found (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


@dataclass
class Browser:
    """One Chromium for the session; `open(url)` loads a page, `call(fn, *args)` awaits
    `edgefnPage[fn](...args)` in it and returns what it resolved to."""

    driver: Any

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.console()  # start each page with an empty log

    def call(self, fn: str, *args: Any) -> Any:
        script = (
            "const done = arguments[arguments.length - 1];"
            f"window.edgefnPage[{json.dumps(fn)}](...Array.from(arguments).slice(0, -1))"
            ".then(done, (e) => done({thrown: String(e && e.stack || e)}));"
        )
        result = self.driver.execute_async_script(script, *args)
        assert not (isinstance(result, dict) and "thrown" in result), result
        return result

    def console(self) -> list[str]:
        """The console and network messages since the last call (then forgotten)."""
        return [entry["message"] for entry in self.driver.get_log("browser")]


@pytest.fixture(scope="package")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium, chromedriver = _binaries()
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("browser suite: selenium is not installed (it is in the 'test' extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    except WebDriverException as exc:
        pytest.skip(f"browser suite: Chromium did not start: {' '.join(str(exc.msg or exc).split())[:300]}")
    driver.set_script_timeout(SCRIPT_TIMEOUT_S)
    driver.set_page_load_timeout(SCRIPT_TIMEOUT_S)
    try:
        yield Browser(driver)
    finally:
        driver.quit()


# -- the page, on two origins ------------------------------------------------------------------


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _static_site(root: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Site:
    """The test page, served from two ports: `allowed` is the origin `edgefn dev` and the
    bucket allow, `other` an origin neither lists."""

    root: Path
    allowed: str
    other: str


@pytest.fixture(scope="package")
def site(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site")
    for f in PAGE.iterdir():
        shutil.copy(f, root / f.name)
    with _static_site(root) as allowed, _static_site(root) as other:
        yield Site(root, allowed, other)


@pytest.fixture(scope="package")
def supabase_js(site: Site) -> None:
    """supabase-js in the page (the /docs tests do without it)."""
    try:
        bundle = jsbundle.build()
    except jsbundle.Unavailable as exc:
        pytest.skip(f"browser suite: no supabase-js bundle: {exc}")
    shutil.copy(bundle, site.root / "supabase.js")


# -- the S3 stand-in, with R2's CORS policy ---------------------------------------------------


def readme_cors_rules(origin: str) -> list[dict[str, Any]]:
    """The bucket CORS policy upload-media's README gives for R2, for `origin`."""
    blocks = re.findall(r"```json\n(.*?)```", UPLOAD_README.read_text(), flags=re.S)
    [rules] = [json.loads(b) for b in blocks if "AllowedHeaders" in b]
    return [{**rule, "AllowedOrigins": [origin]} for rule in rules]


@dataclass
class S3:
    endpoint: str
    client: Any

    def set_cors(self, rules: list[dict[str, Any]]) -> None:
        self.client.put_bucket_cors(Bucket=BUCKET, CORSConfiguration={"CORSRules": rules})


@pytest.fixture(scope="package")
def s3(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto's server in its own process, without its allow-everything CORS, so the bucket's
    own policy is what the browser gets (as from R2)."""
    import boto3

    from edgefn.embedded import public_read_policy

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env={**clean_env(), "MOTO_DISABLE_GLOBAL_CORS": "true"}, stdout=out, stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(endpoint, timeout=1)
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moto's server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY, region_name="us-east-1"
        )
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_policy(Bucket=BUCKET, Policy=public_read_policy(BUCKET))
        s3 = S3(endpoint, client)
        s3.set_cors(readme_cors_rules(site.allowed))
        yield s3
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


# -- edgefn dev ------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def dev_database(pg_admin_dsn: str) -> Iterator[str]:
    """A database of its own for the browser suite's `edgefn dev`, which migrates and seeds it."""
    with scratch_database(pg_admin_dsn, "edgefn_browser") as dsn:
        yield dsn


def dev_env(database: str, s3: S3, origin: str, **extra: str) -> dict[str, str]:
    return clean_env(
        DATABASE_URL=database,
        R2_ENDPOINT_URL=s3.endpoint,
        R2_BUCKET=BUCKET,
        R2_ACCESS_KEY_ID=S3_KEY,
        R2_SECRET_ACCESS_KEY=S3_KEY,
        R2_PUBLIC_URL=f"{s3.endpoint}/{BUCKET}",
        CORS_ORIGINS=origin,
        **extra,
    )


@pytest.fixture(scope="package")
def dev(
    site: Site, s3: S3, dev_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevServer]:
    """The real `edgefn dev`, allowing the page's origin only (its Redis embedded)."""
    env = dev_env(dev_database, s3, site.allowed)
    with start_dev(tmp_path_factory.mktemp("dev"), "--seed", env=env) as server:
        yield server
