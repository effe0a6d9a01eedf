"""Fixtures for the upload-media tests: the run's bucket on moto's S3 server, a signed-in
user, and `media`, which drives the function in process with real Postgres and Redis."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from functions.upload_media.handler import fn
from functions.upload_media.models import MediaObject
from functions.upload_media.settings import UploadMediaSettings
from tests import factories as f
from tests.functions.upload_media.samples import CONTENT_TYPE, Streamed

URL = "/functions/v1/upload-media"
KEY = re.compile(r"^(?P<bucket>[a-z]+)/(?P<user>[0-9a-f-]{36})/(?P<id>[0-9a-f]{32})\.(?P<ext>[a-z0-9]+)$")


@pytest.fixture(scope="session")
def s3(s3_endpoint: str, base_env: dict[str, Any]) -> Iterator[Any]:
    """A plain S3 client on moto, with the run's bucket created (what the tests inspect)."""
    import boto3

    from edgefn.embedded import public_read_policy

    client = boto3.session.Session().client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    )  # fmt: skip
    try:
        client.create_bucket(Bucket=base_env["r2_bucket"])
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    # served publicly, as an R2 bucket is behind R2_PUBLIC_URL
    client.put_bucket_policy(Bucket=base_env["r2_bucket"], Policy=public_read_policy(base_env["r2_bucket"]))
    client.bucket_name = base_env["r2_bucket"]
    yield client
    client.close()


async def head(s3: Any, key: str) -> dict[str, Any]:
    """The object's HEAD (in a thread: boto3 blocks)."""
    return await asyncio.to_thread(s3.head_object, Bucket=s3.bucket_name, Key=key)  # type: ignore[no-any-return]


async def content(s3: Any, key: str) -> bytes:
    """The object's bytes (in a thread: boto3 blocks)."""
    return await asyncio.to_thread(lambda: s3.get_object(Bucket=s3.bucket_name, Key=key)["Body"].read())  # type: ignore[no-any-return]


async def objects(s3: Any, prefix: str) -> dict[str, int]:
    """key -> size of every object under `prefix` (boto3 is blocking: listed in a thread)."""

    def listing() -> dict[str, int]:
        out: dict[str, int] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket_name, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["Size"]
        return out

    return await asyncio.to_thread(listing)


async def rows(dsn: str, owner: str) -> list[dict[str, Any]]:
    """The owner's media rows, read as the superuser (what the function really wrote)."""
    from psycopg.rows import dict_row

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = await conn.execute("select * from public.media_objects where owner_id = %s order by created_at", (owner,))
        return await cur.fetchall()


class User:
    def __init__(self, user_id: str, token: str) -> None:
        self.id = user_id
        self.token = token
        self.auth = {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def new_user(database_url: str, make_token: Any) -> Any:
    async def make(tier: str = "free") -> User:
        uid = await f.create_user(database_url, tier=tier)
        return User(uid, make_token(uid, tier=tier))

    return make


@pytest.fixture
async def user(new_user: Any) -> User:
    return await new_user()  # type: ignore[no-any-return]


class Media:
    """The function behind one in-process client (settings overrides per fixture use)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def upload(self, who: User | None, body: bytes | Streamed, *, content_type: str = CONTENT_TYPE,
                     headers: dict[str, str] | None = None) -> httpx.Response:
        h = {"Content-Type": content_type, **(who.auth if who else {}), **(headers or {})}
        r = await self.client.post(URL, content=body, headers=h)
        if r.status_code == 201:
            MediaObject.model_validate(r.json()["data"])
        return r

    async def presign(self, who: User, **body: Any) -> httpx.Response:
        return await self.client.post(URL + "/presign", json=body, headers=who.auth)

    async def confirm(self, who: User, key: str, **extra: Any) -> httpx.Response:
        r = await self.client.post(URL + "/confirm", json={"key": key, **extra}, headers=who.auth)
        if r.status_code == 200:
            MediaObject.model_validate(r.json()["data"])
        return r

    async def list(self, who: User, **params: Any) -> httpx.Response:
        return await self.client.get(URL, params=params, headers=who.auth)

    async def delete(self, who: User, media_id: str) -> httpx.Response:
        return await self.client.delete(f"{URL}/{media_id}", headers=who.auth)


@pytest.fixture(scope="session")
def storage(base_env: dict[str, Any]) -> Any:
    """One R2 client for the tests that do not change its settings (a boto3 client costs
    ~250 ms to build; the function keeps one per warm container the same way)."""
    from shared.storage import Storage

    return Storage.from_settings(UploadMediaSettings.load(env={}, **base_env))


@pytest.fixture
def media_for(client_for: Any, s3: Any, storage: Any, base_env: dict[str, Any]) -> Any:
    """media_for(**settings_overrides) -> Media (the app is reconfigured by each call)."""
    from shared.services import Services

    def make(**overrides: Any) -> Media:
        if any(k.startswith("r2_") for k in overrides):
            return Media(client_for(fn, **overrides))
        settings = UploadMediaSettings.load(env={}, **{**base_env, **overrides})
        return Media(client_for(fn, services=Services(settings, storage=storage), **overrides))

    return make


@pytest.fixture
def media(media_for: Any) -> Media:
    return media_for()  # type: ignore[no-any-return]


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert body["success"] is False and body["error"]["request_id"], body
    return str(body["error"]["code"])


def unique() -> str:
    return uuid.uuid4().hex
