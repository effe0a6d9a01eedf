"""GET /functions/v1/upload-media (the caller's media) and DELETE /{id}."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests import factories as f
from tests.functions.upload_media import samples as smp
from tests.functions.upload_media.conftest import Media, User, error_code, objects, rows


async def test_the_list_is_the_callers_own_newest_first_in_pages(media: Media, new_user: Any, database_url: str) -> None:
    me, other = await new_user(), await new_user()
    mine = [await f.add_media(database_url, me.id, bucket="posts" if i % 2 else "avatars") for i in range(5)]
    await f.add_media(database_url, other.id)
    await f.add_media(database_url, me.id, status="pending")
    await f.add_media(database_url, me.id, status="deleted")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await media.list(me, **params)
        assert r.status_code == 200, r.text
        page = r.json()["data"]
        seen += [i["id"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(mine)) and pages == 3
    posts = (await media.list(me, bucket="posts")).json()["data"]["items"]
    assert [i["id"] for i in posts] == [mine[3], mine[1]]
    assert all(i["url"].endswith("/" + i["key"]) for i in posts)


async def test_media_with_the_same_timestamp_page_without_gaps(media: Media, user: User, database_url: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(database_url) as conn:  # one transaction: one now()
        ids = [await f.add_media(conn, user.id) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        r = await media.list(user, limit=2, **({"cursor": cursor} if cursor else {}))
        page = r.json()["data"]
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5


@pytest.mark.parametrize(
    ("params", "code"),
    [({"cursor": "not-a-cursor"}, "INVALID_CURSOR"), ({"limit": 0}, "VALIDATION_ERROR"), ({"limit": 101}, "VALIDATION_ERROR"),
     ({"user_id": str(uuid.uuid4())}, "VALIDATION_ERROR"), ({"bucket": "secrets"}, "VALIDATION_ERROR")],
)
async def test_bad_list_parameters_are_400s(media: Media, user: User, params: dict[str, Any], code: str) -> None:
    r = await media.list(user, **params)
    assert r.status_code == 400 and error_code(r) == code


async def test_delete_removes_the_object_and_the_row(media: Media, user: User, s3: Any, database_url: str) -> None:
    up = (await media.upload(user, smp.form(smp.sized(smp.PNG, 3000), bucket="avatars"))).json()["data"]
    r = await media.delete(user, up["id"])
    assert r.status_code == 200 and r.json()["data"] == {"id": up["id"], "deleted": True}
    assert await objects(s3, up["key"]) == {} and await rows(database_url, user.id) == []
    assert (await media.list(user)).json()["data"]["items"] == []
    again = await media.delete(user, up["id"])
    assert again.status_code == 404 and error_code(again) == "MEDIA_NOT_FOUND"


async def test_someone_elses_id_is_a_404_like_a_missing_one(media: Media, new_user: Any, s3: Any, database_url: str) -> None:
    owner, intruder = await new_user(), await new_user()
    up = (await media.upload(owner, smp.form(smp.sized(smp.PNG, 3000), bucket="avatars"))).json()["data"]
    theirs = await media.delete(intruder, up["id"])
    missing = await media.delete(intruder, str(uuid.uuid4()))
    assert theirs.status_code == missing.status_code == 404
    assert error_code(theirs) == error_code(missing) == "MEDIA_NOT_FOUND"
    assert theirs.json()["error"]["message"] == missing.json()["error"]["message"]
    assert await objects(s3, up["key"]) == {up["key"]: 3000}
    assert [r["status"] for r in await rows(database_url, owner.id)] == ["stored"]


async def test_a_malformed_id_is_a_400(media: Media, user: User) -> None:
    r = await media.delete(user, "avatars%2F..%2Fx")
    assert r.status_code in (400, 404)
    r = await media.delete(user, "12345")
    assert r.status_code == 400 and error_code(r) == "INVALID_ID"


async def test_a_delete_that_cannot_reach_r2_can_be_retried(media_for: Any, user: User, s3: Any, database_url: str) -> None:
    from bench.harness import free_port

    up = (await media_for().upload(user, smp.form(smp.sized(smp.PNG, 3000), bucket="avatars"))).json()["data"]
    r = await media_for(r2_endpoint_url=f"http://127.0.0.1:{free_port()}").delete(user, up["id"])
    assert r.status_code == 503 and error_code(r) == "STORAGE_UNAVAILABLE"
    # hidden from the list, the key kept until the object is gone
    assert [r["status"] for r in await rows(database_url, user.id)] == ["deleted"]
    media = media_for()
    assert (await media.list(user)).json()["data"]["items"] == []
    assert (await media.delete(user, up["id"])).status_code == 200
    assert await objects(s3, up["key"]) == {} and await rows(database_url, user.id) == []
