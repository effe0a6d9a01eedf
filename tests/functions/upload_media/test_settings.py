"""R2 settings: a configuration whose returned URLs would not load is refused at start-up,
naming the key; the URLs returned do load; the README's CORS rule allows exactly the
headers a presigned PUT signs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from functions.upload_media.settings import UploadMediaSettings
from shared.settings import ConfigError
from tests.functions.upload_media import samples as smp
from tests.functions.upload_media.conftest import Media, User

README = Path(__file__).resolve().parents[3] / "functions" / "upload_media" / "README.md"
#: headers a browser sets itself: never in Access-Control-Request-Headers
BROWSER_SET = {"host", "content-length"}


@pytest.mark.parametrize("configured", [
    {"R2_ENDPOINT_URL": "https://acct.r2.cloudflarestorage.com", "R2_BUCKET": "media"},
    {"R2_ACCOUNT_ID": "acct", "R2_BUCKET": "media"},
    {"R2_BUCKET": "media"},
])
def test_r2_without_a_public_url_refuses_to_load_and_names_the_key(configured: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        UploadMediaSettings.load(env=configured)
    assert "R2_PUBLIC_URL" in str(caught.value) and "custom domain" in str(caught.value)


@pytest.mark.parametrize(("value", "why"), [
    ("https://acct.r2.cloudflarestorage.com/media", "S3 API host"),
    ("https://media.acct.r2.cloudflarestorage.com", "S3 API host"),
    ("media.example.com", "http(s) base URL"),
    ("ftp://media.example.com", "http(s) base URL"),
    ("https://media.example.com/?x=1", "http(s) base URL"),
])
def test_a_public_url_that_cannot_serve_objects_is_refused(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        UploadMediaSettings.load(env={"R2_ACCOUNT_ID": "acct", "R2_BUCKET": "media", "R2_PUBLIC_URL": value})
    assert str(caught.value).startswith("invalid configuration: R2_PUBLIC_URL:") and why in str(caught.value)


def test_a_custom_domain_or_r2_dev_url_loads_and_other_functions_need_none() -> None:
    for url in ("https://media.example.com/", "https://pub-0123456789abcdef.r2.dev"):
        s = UploadMediaSettings.load(env={"R2_ACCOUNT_ID": "acct", "R2_BUCKET": "media", "R2_PUBLIC_URL": url})
        assert s.r2_public_url == url.rstrip("/")
    assert UploadMediaSettings.load(env={}).r2_public_url is None  # R2 not configured at all


def test_storage_never_builds_a_url_on_the_api_endpoint() -> None:
    from shared.storage import Storage

    storage = Storage(endpoint_url="https://acct.r2.cloudflarestorage.com", bucket="media",
                      access_key_id="k", secret_access_key="s")
    with pytest.raises(ConfigError, match="R2_PUBLIC_URL"):
        storage.public_url("avatars/u/x.png")


async def test_the_returned_url_serves_the_uploaded_bytes(media: Media, user: User) -> None:
    data = smp.sized(smp.PNG, 4000)
    r = await media.upload(user, smp.form(data, bucket="avatars"))
    assert r.status_code == 201, r.text
    from shared import tls

    async with tls.client() as plain:  # no credentials: as a browser loads it
        got = await plain.get(r.json()["data"]["url"])
    assert got.status_code == 200 and got.content == data


def readme_cors_rule() -> dict[str, Any]:
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.S)
    rules = [json.loads(b) for b in blocks if "AllowedHeaders" in b]
    assert len(rules) == 1, "the README has one CORS policy"
    [rule] = rules[0]
    return rule  # type: ignore[no-any-return]


async def test_the_readme_cors_rule_allows_exactly_the_signed_headers_a_browser_sends(media: Media, user: User) -> None:
    r = await media.client.post("/functions/v1/upload-media/presign", headers=user.auth,
                                json={"bucket": "videos", "content_type": "video/mp4", "content_length": 5 * 1024 * 1024})
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    signed = set(parse_qs(urlsplit(d["upload_url"]).query)["X-Amz-SignedHeaders"][0].split(";"))
    assert {h.lower() for h in d["headers"]} | {"host"} == signed  # the client is told to send them all
    rule = readme_cors_rule()
    assert set(rule["AllowedHeaders"]) == signed - BROWSER_SET
    assert "PUT" in rule["AllowedMethods"] and "ETag" in rule["ExposeHeaders"]
    assert f"X-Amz-SignedHeaders={';'.join(sorted(signed))}" in README.read_text()
