"""Large files: POST /presign, PUT to R2 (moto here), POST /confirm.

moto accepts a wrong Content-Type, a body longer than the signed length and an expired URL,
so what R2 would enforce is checked where it is decided: in the URL the function signs
(parsed here) and in what confirm refuses."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from functions.upload_media.settings import MiB
from tests.functions.upload_media import samples as smp
from tests.functions.upload_media.conftest import KEY, Media, User, content, error_code, head, objects, rows


async def put(url: str, headers: dict[str, str], data: bytes) -> httpx.Response:
    from shared import tls

    async with tls.client() as c:
        return await c.put(url, content=data, headers={k: v for k, v in headers.items() if k != "Content-Length"})


async def presigned(media: Media, who: User, data: bytes, *, bucket: str = "videos", content_type: str = "video/mp4",
                    filename: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"bucket": bucket, "content_type": content_type, "content_length": len(data)}
    if filename:
        body["filename"] = filename
    r = await media.presign(who, **body)
    assert r.status_code == 200, r.text
    return r.json()["data"]  # type: ignore[no-any-return]


async def test_the_url_signs_type_length_and_no_overwrite_and_expires_soon(media: Media, user: User) -> None:
    big = await asyncio.to_thread(smp.sized, smp.MP4, 50 * MiB)  # 50 MiB of random bytes: off the loop
    d = await presigned(media, user, big, filename="holiday.MP4")
    q = parse_qs(urlsplit(d["upload_url"]).query)
    signed = set(q["X-Amz-SignedHeaders"][0].split(";"))
    assert {"content-type", "content-length", "cache-control", "if-none-match", "host"} <= signed
    assert 0 < int(q["X-Amz-Expires"][0]) <= 600
    assert d["expires_in"] == int(q["X-Amz-Expires"][0])
    assert d["headers"] == {
        "Content-Type": "video/mp4", "Content-Length": str(50 * MiB),
        "Cache-Control": "public, max-age=31536000, immutable", "If-None-Match": "*",
    }  # fmt: skip
    m = KEY.match(d["key"])
    assert m and m["bucket"] == "videos" and m["user"] == user.id and m["ext"] == "mp4"
    assert urlsplit(d["upload_url"]).path.endswith("/" + d["key"]) and d["public_url"].endswith("/" + d["key"])
    assert d["method"] == "PUT" and d["confirm_url"] == "/functions/v1/upload-media/confirm"


async def test_presign_put_confirm_records_the_object_once(media: Media, user: User, s3: Any, database_url: str) -> None:
    data = smp.sized(smp.MOV, 300_000)
    d = await presigned(media, user, data, content_type="video/quicktime", filename="IMG_1.mov")
    assert (await put(d["upload_url"], d["headers"], data)).status_code == 200
    assert await rows(database_url, user.id) == []  # nothing is recorded before confirm
    r = await media.confirm(user, d["key"])
    assert r.status_code == 200, r.text
    m = r.json()["data"]
    assert m["key"] == d["key"] and m["content_type"] == "video/quicktime" and m["size_bytes"] == len(data)
    meta = await head(s3, d["key"])
    assert meta["ContentType"] == "video/quicktime" and meta["CacheControl"] == "public, max-age=31536000, immutable"
    again = await media.confirm(user, d["key"])
    assert again.status_code == 200 and again.json()["data"]["id"] == m["id"]
    [row] = await rows(database_url, user.id)
    assert str(row["id"]) == m["id"] and row["status"] == "stored"
    listed = (await media.list(user)).json()["data"]["items"]
    assert [i["id"] for i in listed] == [m["id"]]


async def test_concurrent_confirms_record_one_row(media: Media, user: User, database_url: str) -> None:
    data = smp.sized(smp.WEBM, 20_000)
    d = await presigned(media, user, data, content_type="video/webm")
    assert (await put(d["upload_url"], d["headers"], data)).status_code == 200
    rs = await asyncio.gather(*(media.confirm(user, d["key"]) for _ in range(6)))
    assert [r.status_code for r in rs] == [200] * 6
    assert len({r.json()["data"]["id"] for r in rs}) == 1
    assert len(await rows(database_url, user.id)) == 1


async def test_a_second_put_to_the_same_url_cannot_overwrite(media: Media, user: User, s3: Any) -> None:
    data = smp.sized(smp.PNG, 1000)
    d = await presigned(media, user, data, bucket="avatars", content_type="image/png")
    assert (await put(d["upload_url"], d["headers"], data)).status_code == 200
    assert (await put(d["upload_url"], d["headers"], smp.sized(smp.PNG, 1000))).status_code == 412
    assert await content(s3, d["key"]) == data


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"bucket": "videos", "content_type": "image/png", "content_length": 1000}, 415, "TYPE_NOT_ALLOWED_IN_BUCKET"),
        ({"bucket": "avatars", "content_type": "video/mp4", "content_length": 1000}, 415, "TYPE_NOT_ALLOWED_IN_BUCKET"),
        ({"bucket": "avatars", "content_type": "application/pdf", "content_length": 1000}, 415, "UNSUPPORTED_FILE_TYPE"),
        ({"bucket": "avatars", "content_type": "image/svg+xml", "content_length": 1000}, 415, "UNSUPPORTED_FILE_TYPE"),
        ({"bucket": "avatars", "content_type": "application/octet-stream", "content_length": 1000}, 415, "UNSUPPORTED_FILE_TYPE"),
        ({"bucket": "videos", "content_type": "video/mp4", "content_length": 1000, "filename": "a.png"}, 415, "EXTENSION_MISMATCH"),
        ({"bucket": "avatars", "content_type": "image/png", "content_length": 5 * MiB + 1}, 413, "FILE_TOO_LARGE"),
        ({"bucket": "covers", "content_type": "image/png", "content_length": 10 * MiB + 1}, 413, "FILE_TOO_LARGE"),
        ({"bucket": "videos", "content_type": "video/mp4", "content_length": 100 * MiB + 1}, 413, "FILE_TOO_LARGE"),
        ({"bucket": "avatars", "content_type": "image/png", "content_length": 0}, 400, "EMPTY_FILE"),
        ({"bucket": "avatars", "content_type": "image/png", "content_length": -1}, 400, "VALIDATION_ERROR"),
        ({"bucket": "avatars", "content_type": "image/png", "content_length": "12"}, 400, "VALIDATION_ERROR"),
        ({"bucket": "docs", "content_type": "image/png", "content_length": 10}, 400, "VALIDATION_ERROR"),
        ({"bucket": "avatars", "content_type": "image/png", "content_length": 10, "user_id": "x"}, 400, "VALIDATION_ERROR"),
        ({"bucket": "avatars", "content_type": "image/png", "content_length": 10, "key": "avatars/x/y.png"}, 400, "VALIDATION_ERROR"),
    ],
)
async def test_presign_applies_the_same_rules(media: Media, user: User, body: dict[str, Any], status: int, code: str) -> None:
    r = await media.presign(user, **body)
    assert r.status_code == status, r.text
    assert error_code(r) == code


async def test_the_largest_allowed_video_is_presigned(media: Media, user: User) -> None:
    r = await media.presign(user, bucket="videos", content_type="video/mp4", content_length=100 * MiB)
    assert r.status_code == 200, r.text


# -- confirm refuses what moto let through ----------------------------------------------------


async def _put_raw(s3: Any, key: str, data: bytes, content_type: str) -> None:
    await asyncio.to_thread(s3.put_object, Bucket=s3.bucket_name, Key=key, Body=data, ContentType=content_type)


async def test_bytes_that_are_not_the_signed_type_are_removed_at_confirm(
    media: Media, user: User, s3: Any, database_url: str
) -> None:
    jpeg = smp.sized(smp.JPEG, 2000)
    d = await presigned(media, user, jpeg, bucket="avatars", content_type="image/png")
    assert (await put(d["upload_url"], d["headers"], jpeg)).status_code == 200  # R2 checks the header, not the bytes
    r = await media.confirm(user, d["key"])
    assert r.status_code == 422 and error_code(r) == "UPLOAD_MISMATCH"
    assert "image/jpeg" in r.json()["error"]["message"]
    assert await objects(s3, d["key"]) == {} and await rows(database_url, user.id) == []


async def test_a_stored_type_other_than_the_signed_one_is_removed(media: Media, user: User, s3: Any, database_url: str) -> None:
    data = smp.sized(smp.PNG, 2000)
    d = await presigned(media, user, data, bucket="avatars", content_type="image/png")
    await _put_raw(s3, d["key"], data, "text/html")  # what moto lets a PUT with the wrong header do
    r = await media.confirm(user, d["key"])
    assert r.status_code == 422 and error_code(r) == "UPLOAD_MISMATCH"
    assert await objects(s3, d["key"]) == {} and await rows(database_url, user.id) == []


async def test_an_object_above_the_cap_is_removed_at_confirm(media_for: Any, user: User, s3: Any, database_url: str) -> None:
    media = media_for(upload_max_image_bytes=4000)
    d = await presigned(media, user, smp.sized(smp.PNG, 3000), bucket="avatars", content_type="image/png")
    await _put_raw(s3, d["key"], smp.sized(smp.PNG, 9000), "image/png")  # longer than signed: moto does not mind
    r = await media.confirm(user, d["key"])
    assert r.status_code == 422 and error_code(r) == "UPLOAD_MISMATCH" and "cap" in r.json()["error"]["message"]
    assert await objects(s3, d["key"]) == {} and await rows(database_url, user.id) == []


async def test_an_empty_object_is_removed_at_confirm(media: Media, user: User, s3: Any) -> None:
    d = await presigned(media, user, smp.sized(smp.PNG, 3000), bucket="avatars", content_type="image/png")
    await _put_raw(s3, d["key"], b"", "image/png")
    r = await media.confirm(user, d["key"])
    assert r.status_code == 422 and error_code(r) == "UPLOAD_MISMATCH"
    assert await objects(s3, d["key"]) == {}


async def test_confirming_someone_elses_key_is_a_404_and_leaves_it_alone(
    media: Media, new_user: Any, s3: Any, database_url: str
) -> None:
    owner, intruder = await new_user(), await new_user()
    data = smp.sized(smp.PNG, 2000)
    d = await presigned(media, owner, data, bucket="avatars", content_type="image/png")
    assert (await put(d["upload_url"], d["headers"], data)).status_code == 200
    r = await media.confirm(intruder, d["key"])
    assert r.status_code == 404 and error_code(r) == "MEDIA_NOT_FOUND"
    assert await objects(s3, d["key"]) == {d["key"]: 2000}
    assert await rows(database_url, intruder.id) == [] and await rows(database_url, owner.id) == []


async def test_confirming_before_the_put_is_a_404(media: Media, user: User) -> None:
    d = await presigned(media, user, smp.sized(smp.PNG, 2000), bucket="avatars", content_type="image/png")
    r = await media.confirm(user, d["key"])
    assert r.status_code == 404 and error_code(r) == "MEDIA_NOT_FOUND"


@pytest.mark.parametrize(
    "key",
    [
        "avatars/{uid}/../../other/x.png",
        "avatars/{uid}/photo.png",
        "private/{uid}/0190f5a0c0de7abc8def0123456789ab.png",
        "avatars/{uid}/0190f5a0c0de7abc8def0123456789ab.exe",
        "/avatars/{uid}/0190f5a0c0de7abc8def0123456789ab.png",
        "avatars/{uid}/0190f5a0c0de7abc8def0123456789ab.png?x=1",
    ],
)
async def test_only_keys_the_function_issues_are_confirmed(media: Media, user: User, key: str) -> None:
    r = await media.confirm(user, key.format(uid=user.id))
    assert r.status_code == 400 and error_code(r) == "INVALID_KEY"


async def test_confirm_takes_only_a_key(media: Media, user: User) -> None:
    r = await media.confirm(user, "avatars/x/y.png", size_bytes=1)
    assert r.status_code == 400 and error_code(r) == "VALIDATION_ERROR"


async def test_presigns_count_against_the_upload_quota(media_for: Any, user: User) -> None:
    media = media_for(upload_hourly_free=1, upload_daily_mib_free=150)
    assert (await media.presign(user, bucket="videos", content_type="video/mp4", content_length=100 * MiB)).status_code == 200
    r = await media.presign(user, bucket="videos", content_type="video/mp4", content_length=1000)
    assert r.status_code == 429 and error_code(r) == "UPLOAD_QUOTA_EXCEEDED"


async def test_presigned_bytes_count_against_the_daily_volume(media_for: Any, user: User) -> None:
    media = media_for(upload_daily_mib_free=150)
    assert (await media.presign(user, bucket="videos", content_type="video/mp4", content_length=100 * MiB)).status_code == 200
    r = await media.presign(user, bucket="videos", content_type="video/mp4", content_length=60 * MiB)
    assert r.status_code == 429 and error_code(r) == "UPLOAD_BYTES_QUOTA_EXCEEDED"


async def test_confirm_with_r2_unreachable_is_a_503_and_records_nothing(media_for: Any, user: User, database_url: str) -> None:
    from bench.harness import free_port

    d = await presigned(media_for(), user, smp.sized(smp.PNG, 2000), bucket="avatars", content_type="image/png")
    r = await media_for(r2_endpoint_url=f"http://127.0.0.1:{free_port()}").confirm(user, d["key"])
    assert r.status_code == 503 and error_code(r) == "STORAGE_UNAVAILABLE"
    assert await rows(database_url, user.id) == []


async def test_presigned_uploads_never_confirmed_are_swept(media_for: Any, user: User, s3: Any, database_url: str) -> None:
    import time

    from functions.upload_media.handler import fn
    from functions.upload_media.sweep import sweep

    media = media_for(upload_presign_expires_seconds=60, upload_orphan_grace_seconds=30)
    data = smp.sized(smp.PNG, 1500)
    confirmed, abandoned, never_put = [
        await presigned(media, user, data, bucket="posts", content_type="image/png") for _ in range(3)
    ]
    for d in (confirmed, abandoned):
        assert (await put(d["upload_url"], d["headers"], data)).status_code == 200
    assert (await media.confirm(user, confirmed["key"])).status_code == 200

    assert await sweep(fn.services) == {"unconfirmed_removed": 0, "confirmed": 0}  # not due yet
    assert await sweep(fn.services, now=time.time() + 91) == {"unconfirmed_removed": 2, "confirmed": 1}
    assert set(await objects(s3, f"posts/{user.id}/")) == {confirmed["key"]}
    assert [r["object_key"] for r in await rows(database_url, user.id)] == [confirmed["key"]]
    assert await sweep(fn.services, now=time.time() + 91) == {"unconfirmed_removed": 0, "confirmed": 0}
    assert never_put["key"] not in await objects(s3, "posts/")
