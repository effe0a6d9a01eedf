"""POST /functions/v1/upload-media (inline multipart upload) in process, against real
Postgres and Redis and moto's S3 server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from functions.upload_media.settings import MiB
from tests.functions.upload_media import samples as smp
from tests.functions.upload_media.conftest import KEY, Media, User, content, error_code, head, objects, rows


async def test_a_png_is_stored_with_its_sniffed_type_and_recorded(media: Media, user: User, s3: Any, database_url: str) -> None:
    data = smp.sized(smp.PNG, 300_000)
    r = await media.upload(user, smp.form(data, bucket="avatars", filename="me.PNG", ctype="image/png"))
    assert r.status_code == 201, r.text
    d = r.json()["data"]
    m = KEY.match(d["key"])
    assert m and m["bucket"] == "avatars" and m["user"] == user.id and m["ext"] == "png"
    assert d["content_type"] == "image/png" and d["size_bytes"] == len(data) and d["status"] == "stored"
    assert d["url"].endswith("/" + d["key"])
    meta = await head(s3, d["key"])
    assert meta["ContentType"] == "image/png" and meta["ContentLength"] == len(data)
    assert meta["CacheControl"] == "public, max-age=31536000, immutable"
    assert await content(s3, d["key"]) == data
    [row] = await rows(database_url, user.id)
    assert str(row["id"]) == d["id"] and row["object_key"] == d["key"] and row["status"] == "stored"
    assert row["size_bytes"] == len(data) and row["content_type"] == "image/png" and row["bucket"] == "avatars"


@pytest.mark.parametrize(
    ("bucket", "start", "filename", "ctype", "stored", "ext"),
    [
        ("posts", smp.JPEG, "a.jpeg", "image/jpg", "image/jpeg", "jpg"),
        ("products", smp.WEBP, "a.webp", None, "image/webp", "webp"),
        ("covers", smp.GIF, None, "application/octet-stream", "image/gif", "gif"),
        ("videos", smp.MP4, "clip.mp4", "video/mp4", "video/mp4", "mp4"),
        ("videos", smp.MOV, "IMG_0001.MOV", "video/quicktime", "video/quicktime", "mov"),
        ("videos", smp.WEBM, "clip.webm", "video/webm", "video/webm", "webm"),
    ],
)
async def test_each_accepted_type_gets_the_extension_of_its_bytes(
    media: Media, user: User, s3: Any, bucket: str, start: bytes, filename: str | None, ctype: str | None, stored: str, ext: str
) -> None:
    r = await media.upload(user, smp.form(smp.sized(start, 5000), bucket=bucket, filename=filename, ctype=ctype))
    assert r.status_code == 201, r.text
    d = r.json()["data"]
    assert d["content_type"] == stored and d["key"].endswith("." + ext) and d["key"].startswith(f"{bucket}/{user.id}/")
    assert (await head(s3, d["key"]))["ContentType"] == stored


async def test_the_bucket_may_come_after_the_file(media: Media, user: User) -> None:
    r = await media.upload(user, smp.form(smp.sized(smp.PNG, 2000), bucket="posts", bucket_first=False))
    assert r.status_code == 201, r.text
    assert r.json()["data"]["bucket"] == "posts"


@pytest.mark.parametrize(
    ("bucket", "start", "filename", "ctype", "code"),
    [
        ("videos", smp.PNG, "clip.mp4", "video/mp4", "TYPE_NOT_ALLOWED_IN_BUCKET"),
        ("avatars", smp.PNG, "photo.mp4", "image/png", "EXTENSION_MISMATCH"),
        ("avatars", smp.PNG, "photo.png", "video/mp4", "CONTENT_TYPE_MISMATCH"),
        ("avatars", smp.PNG, "photo.png.exe", "image/png", "EXTENSION_MISMATCH"),
        ("avatars", smp.JPEG, "photo.png", "image/png", "CONTENT_TYPE_MISMATCH"),
        ("avatars", smp.HTML, "photo.png", "image/png", "UNSUPPORTED_FILE_TYPE"),
        ("videos", smp.MKV, "clip.webm", "video/webm", "UNSUPPORTED_FILE_TYPE"),
        ("avatars", smp.HEIC, "photo.heic", "image/heic", "UNSUPPORTED_FILE_TYPE"),
        ("avatars", smp.MP4, "clip.mp4", "video/mp4", "TYPE_NOT_ALLOWED_IN_BUCKET"),
    ],
    ids=["png-in-videos", "png-named-mp4", "png-declared-mp4", "png-named-exe", "jpeg-declared-png", "html",
         "matroska-as-webm", "heic", "mp4-in-avatars"],
)
@pytest.mark.parametrize("bucket_first", [True, False], ids=["bucket-first", "bucket-last"])
async def test_the_bytes_decide_the_type_and_a_disagreeing_claim_is_a_415(
    media: Media, user: User, s3: Any, database_url: str,
    bucket: str, start: bytes, filename: str, ctype: str, code: str, bucket_first: bool,
) -> None:
    r = await media.upload(user, smp.form(smp.sized(start, 4000), bucket=bucket, filename=filename, ctype=ctype, bucket_first=bucket_first))
    assert r.status_code == 415, r.text
    if bucket_first:
        assert error_code(r) == code
    else:  # the claims are checked as soon as the bytes are in, the bucket's rules when it comes
        assert error_code(r) in (code, "CONTENT_TYPE_MISMATCH", "EXTENSION_MISMATCH")
    assert await objects(s3, f"{bucket}/{user.id}/") == {} and await rows(database_url, user.id) == []


async def test_a_wrong_type_is_refused_before_the_rest_is_read(media: Media, user: User) -> None:
    body = smp.Streamed(smp.form(smp.sized(smp.HTML, 2 * MiB), bucket="avatars"))
    r = await media.upload(user, body)
    assert r.status_code == 415 and error_code(r) == "UNSUPPORTED_FILE_TYPE"
    assert body.sent < 64 * 1024, body.sent


async def test_the_cap_is_enforced_while_streaming(media_for: Any, user: User, s3: Any, database_url: str) -> None:
    media = media_for(upload_max_image_bytes=256 * 1024)
    body = smp.Streamed(smp.form(smp.sized(smp.PNG, 3 * MiB), bucket="avatars"))
    r = await media.upload(user, body)
    assert r.status_code == 413 and error_code(r) == "FILE_TOO_LARGE"
    assert r.json()["error"]["details"]["max_bytes"] == 256 * 1024
    # refused as soon as the cap was passed: the rest of the body was never pulled
    assert body.sent <= 256 * 1024 + 2 * body.chunk, body.sent
    assert await objects(s3, f"avatars/{user.id}/") == {} and await rows(database_url, user.id) == []


async def test_a_file_above_the_bucket_cap_that_came_before_its_bucket_is_refused(media_for: Any, user: User) -> None:
    media = media_for(upload_max_image_bytes=10_000)
    r = await media.upload(user, smp.form(smp.sized(smp.PNG, 20_000), bucket="avatars", bucket_first=False))
    assert r.status_code == 413 and error_code(r) == "FILE_TOO_LARGE"


async def test_above_the_inline_limit_the_answer_points_to_the_presigned_path(media_for: Any, user: User) -> None:
    media = media_for(upload_inline_max_bytes=128 * 1024)
    body = smp.Streamed(smp.form(smp.sized(smp.MP4, 2 * MiB), bucket="videos", filename="a.mp4", ctype="video/mp4"))
    r = await media.upload(user, body)
    assert r.status_code == 413 and error_code(r) == "USE_PRESIGNED_UPLOAD"
    assert r.json()["error"]["details"]["presign"] == "/functions/v1/upload-media/presign"
    assert body.sent <= 128 * 1024 + 2 * body.chunk


async def test_a_declared_length_above_the_limit_is_refused_before_reading(media: Media, user: User) -> None:
    body = smp.Streamed(smp.form(smp.sized(smp.PNG, 5 * MiB), bucket="posts"))
    r = await media.upload(user, body, headers={"Content-Length": str(len(body.body))})
    assert r.status_code == 413 and error_code(r) == "USE_PRESIGNED_UPLOAD"
    assert body.sent <= body.chunk


async def test_a_file_exactly_at_the_cap_is_stored(media_for: Any, user: User) -> None:
    media = media_for(upload_max_image_bytes=100_000)
    r = await media.upload(user, smp.form(smp.sized(smp.PNG, 100_000), bucket="avatars"))
    assert r.status_code == 201, r.text
    r = await media.upload(user, smp.form(smp.sized(smp.PNG, 100_001), bucket="avatars"))
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (smp.form(b"", bucket="avatars"), "EMPTY_FILE"),
        (smp.form(None, bucket="avatars"), "FILE_REQUIRED"),
        (smp.form(smp.PNG, bucket=None), "BUCKET_REQUIRED"),
        (smp.form(smp.PNG, bucket="documents"), "INVALID_BUCKET"),
        (smp.form(smp.PNG, bucket="../avatars"), "INVALID_BUCKET"),
        (smp.form(smp.PNG, extra={"user_id": "00000000-0000-0000-0000-000000000001"}), "UNEXPECTED_FIELD"),
        (smp.form(smp.PNG, extra={"key": "avatars/someone/else.png"}), "UNEXPECTED_FIELD"),
        (smp.form(smp.PNG)[:-30], "MALFORMED_MULTIPART"),
    ],
)
async def test_bad_forms_are_400s(media: Media, user: User, body: bytes, code: str) -> None:
    r = await media.upload(user, body)
    assert r.status_code == 400, r.text
    assert error_code(r) == code


@pytest.mark.parametrize("bucket_first", [True, False])
async def test_a_forms_extra_text_fields_are_accepted_and_ignored(
    media: Media, user: User, bucket_first: bool
) -> None:
    extra = {"caption": "Me at the concert \u2728", "alt": "a photo", "tags": "kpop,live"}
    r = await media.upload(user, smp.form(smp.PNG, extra=extra, bucket_first=bucket_first))
    assert r.status_code == 201, r.text
    assert r.json()["metadata"]["ignored_fields"] == list(extra)
    assert "concert" not in r.text  # the value is neither kept nor echoed


async def test_extra_fields_are_bounded(media: Media, user: User) -> None:
    from functions.upload_media.multipart import MAX_EXTRA_FIELD_BYTES, MAX_EXTRA_FIELDS

    at_limit = {f"f{i}": "x" * MAX_EXTRA_FIELD_BYTES for i in range(MAX_EXTRA_FIELDS)}
    r = await media.upload(user, smp.form(smp.PNG, extra=at_limit))
    assert r.status_code == 201, r.text
    one_more = {**at_limit, "f_extra": "x"}
    r = await media.upload(user, smp.form(smp.PNG, extra=one_more))
    assert r.status_code == 400 and error_code(r) == "UNEXPECTED_FIELD"
    too_long = {"caption": "x" * (MAX_EXTRA_FIELD_BYTES + 1)}
    r = await media.upload(user, smp.form(smp.PNG, extra=too_long))
    assert r.status_code == 400 and error_code(r) == "FIELD_TOO_LARGE"
    listed = (await media.list(user)).json()["data"]
    assert len(listed["items"] if isinstance(listed, dict) else listed) == 1  # only the upload at the limit


async def test_two_files_are_refused(media: Media, user: User) -> None:
    one = smp.form(smp.sized(smp.PNG, 100), bucket="avatars")
    two = one.replace(f"--{smp.BOUNDARY}--\r\n".encode(), b"") + smp.form(smp.sized(smp.PNG, 100), bucket=None)
    r = await media.upload(user, two)
    assert r.status_code == 400 and error_code(r) == "UNEXPECTED_FIELD"


async def test_only_multipart_is_accepted(media: Media, user: User) -> None:
    r = await media.upload(user, b'{"bucket": "avatars"}', content_type="application/json")
    assert r.status_code == 415 and error_code(r) == "UNSUPPORTED_CONTENT_TYPE"
    r = await media.upload(user, smp.form(smp.PNG), content_type="multipart/form-data")
    assert r.status_code == 400 and error_code(r) == "MALFORMED_MULTIPART"


async def test_a_token_is_required(media: Media) -> None:
    r = await media.upload(None, smp.form(smp.PNG))
    assert r.status_code == 401 and error_code(r) == "AUTH_REQUIRED"


async def test_concurrent_uploads_get_distinct_keys_and_rows(media: Media, user: User, s3: Any, database_url: str) -> None:
    rs = await asyncio.gather(*(media.upload(user, smp.form(smp.sized(smp.PNG, 10_000), bucket="posts")) for _ in range(6)))
    assert [r.status_code for r in rs] == [201] * 6
    keys = {r.json()["data"]["key"] for r in rs}
    assert len(keys) == 6
    assert set(await objects(s3, f"posts/{user.id}/")) == keys
    assert {r["object_key"] for r in await rows(database_url, user.id)} == keys


async def test_keys_sort_by_upload_time(media: Media, user: User) -> None:
    keys = []
    for _ in range(3):
        r = await media.upload(user, smp.form(smp.sized(smp.PNG, 500), bucket="avatars"))
        keys.append(r.json()["data"]["key"])
        await asyncio.sleep(0.002)
    assert keys == sorted(keys)


# -- failures: nothing recorded, nothing left behind --------------------------------------


async def test_r2_unreachable_is_a_503_and_nothing_is_recorded(media_for: Any, user: User, database_url: str) -> None:
    from bench.harness import free_port

    media = media_for(r2_endpoint_url=f"http://127.0.0.1:{free_port()}")
    r = await media.upload(user, smp.form(smp.sized(smp.PNG, 5000), bucket="avatars"))
    assert r.status_code == 503, r.text
    assert error_code(r) == "STORAGE_UNAVAILABLE"
    assert await rows(database_url, user.id) == []


async def test_a_database_failure_after_the_upload_removes_the_object(
    client_for: Any, base_env: dict[str, Any], user: User, s3: Any
) -> None:
    from functions.upload_media.handler import fn
    from functions.upload_media.settings import UploadMediaSettings
    from shared.db import Database
    from shared.services import Services
    from tests.functions.upload_media.conftest import Media

    settings = UploadMediaSettings.load(env={}, **base_env)
    from bench.harness import free_port

    dead = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/none", acquire_timeout=0.5, connect_timeout=1)
    media = Media(client_for(fn, services=Services(settings, db=dead)))
    r = await media.upload(user, smp.form(smp.sized(smp.PNG, 5000), bucket="avatars"))
    assert r.status_code == 503 and error_code(r) == "DATABASE_UNAVAILABLE"
    assert await objects(s3, f"avatars/{user.id}/") == {}


async def test_a_caller_without_an_account_gets_a_403_and_the_object_is_removed(
    media: Media, make_token: Any, s3: Any
) -> None:
    import uuid

    ghost = str(uuid.uuid4())
    who = User(ghost, make_token(ghost))
    r = await media.upload(who, smp.form(smp.sized(smp.PNG, 5000), bucket="avatars"))
    assert r.status_code == 403 and error_code(r) == "ACCOUNT_NOT_FOUND"
    assert await objects(s3, f"avatars/{ghost}/") == {}


# -- quotas ----------------------------------------------------------------------------------


async def test_uploads_per_hour_are_limited_by_tier(media_for: Any, new_user: Any) -> None:
    media = media_for(upload_hourly_free=2, upload_hourly_paid=4)
    free, paid = await new_user("free"), await new_user("paid")
    png = smp.form(smp.sized(smp.PNG, 500), bucket="avatars")
    assert [(await media.upload(free, png)).status_code for _ in range(2)] == [201, 201]
    r = await media.upload(free, png)
    assert r.status_code == 429 and error_code(r) == "UPLOAD_QUOTA_EXCEEDED"
    assert int(r.headers["Retry-After"]) > 0 and r.json()["error"]["details"]["tier"] == "free"
    assert [(await media.upload(paid, png)).status_code for _ in range(4)] == [201] * 4
    assert (await media.upload(paid, png)).status_code == 429


async def test_bytes_per_day_are_limited_and_a_refused_file_is_not_stored(
    media_for: Any, user: User, s3: Any, database_url: str
) -> None:
    media = media_for(upload_daily_mib_free=3)
    r = await media.upload(user, smp.form(smp.sized(smp.PNG, 2 * MiB + 1), bucket="covers"))  # 3 MiB charged
    assert r.status_code == 201, r.text
    r = await media.upload(user, smp.form(smp.sized(smp.PNG, 1000), bucket="covers"))
    assert r.status_code == 429 and error_code(r) == "UPLOAD_BYTES_QUOTA_EXCEEDED"
    assert len(await objects(s3, f"covers/{user.id}/")) == 1 and len(await rows(database_url, user.id)) == 1


async def test_r2_calls_do_not_block_the_event_loop(media_for: Any, user: User, database_url: str) -> None:
    """boto3 is blocking: a slow R2 must not stall other requests (the calls run in threads)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class SlowS3(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            threading.Event().wait(0.6)
            self.send_response(200)
            self.send_header("ETag", '"0"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = await asyncio.to_thread(ThreadingHTTPServer, ("127.0.0.1", 0), SlowS3)  # binding looks up the host name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        media = media_for(r2_endpoint_url=f"http://127.0.0.1:{server.server_address[1]}")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticker = asyncio.create_task(tick())
        r = await media.upload(user, smp.form(smp.sized(smp.PNG, 5000), bucket="avatars"))
        ticker.cancel()
        assert r.status_code == 201, r.text
        assert ticks >= 15  # the loop kept running through the 0.6 s PUT
        assert len(await rows(database_url, user.id)) == 1
    finally:
        server.shutdown()
        server.server_close()
