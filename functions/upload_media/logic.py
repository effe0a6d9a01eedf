"""What upload-media does, route by route. The order of each path is the point:

inline   quota (count) -> stream + sniff + caps -> quota (bytes) -> PUT -> row
presign  rules on the declared type/size -> quotas -> note the key for the sweep -> sign
         (no request to R2)
confirm  key is the caller's -> ranged GET (size, stored type, first bytes) -> sniff -> row
delete   mark the row deleted -> delete the object -> delete the row

A row is written only for an object that is stored; anything that fails after an object
was written removes the object again.
"""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import datetime
from typing import Any
from uuid import UUID

from functions.upload_media import queries, quota, rules, sweep
from functions.upload_media.models import (
    ConfirmBody, Deleted, ListQuery, MediaObject, MediaPage, PresignBody, PresignedUpload,
)  # fmt: skip
from functions.upload_media.multipart import read_upload
from functions.upload_media.settings import UploadMediaSettings
from functions.upload_media.sniff import SNIFF_BYTES, sniff
from functions.upload_media.store import MediaStore, StorageUnreachable
from shared import errors
from shared.context import RequestContext
from shared.observability import json_log

CONFIRM_PATH = "/functions/v1/upload-media/confirm"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: deletes scheduled for objects whose upload outlived a cancelled request
_cleanup: set[asyncio.Task[Any]] = set()


def _settings(ctx: RequestContext) -> UploadMediaSettings:
    s = ctx.settings
    assert isinstance(s, UploadMediaSettings)
    return s


def _owner(ctx: RequestContext) -> str:
    """The caller's id as it appears in keys. A verified token's `sub` is a uuid on
    Supabase; anything else never becomes part of a key. A service token owns no media:
    rows are written as the service for the caller, whose claims name the owner."""
    uid = ctx.user_id.lower()
    if not _UUID.match(uid):
        raise errors.Forbidden("this token's subject cannot own media", code="INVALID_SUBJECT")
    ctx.end_user("media is")
    return uid


def _media(row: dict[str, Any], store: MediaStore) -> MediaObject:
    return MediaObject(
        id=row["id"], bucket=row["bucket"], key=row["object_key"], url=store.public_url(row["object_key"]),
        content_type=row["content_type"], size_bytes=row["size_bytes"], created_at=row["created_at"],
    )  # fmt: skip


# -- inline upload ---------------------------------------------------------------------------


async def upload(ctx: RequestContext) -> MediaObject:
    s = _settings(ctx)
    owner = _owner(ctx)
    store = MediaStore.of(ctx.services)
    await quota.charge_upload(ctx, s)
    async with read_upload(ctx.request, s) as up:
        assert up.bucket is not None and up.content_type is not None and up.file is not None
        if up.ignored_fields:
            ctx.metadata["ignored_fields"] = up.ignored_fields
        rules.check_size(up.bucket, up.size, s)
        await quota.charge_bytes(ctx, s, up.size)
        key = rules.new_key(up.bucket, owner, up.content_type)
        await _put(store, key, up.file, up.size, up.content_type)
    return await _record(ctx, store, owner, key, up.bucket, up.content_type, up.size)


async def _put(store: MediaStore, key: str, body: Any, size: int, content_type: str) -> None:
    """PUT the object. A failed PUT may still have stored it (a read timeout after the
    body went): remove it. If the request is cancelled mid-PUT, the thread carries on, so
    the object is removed once the PUT is over."""
    task = asyncio.ensure_future(store.put(key, body, size, content_type))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        def later(_: asyncio.Future[None]) -> None:
            t = asyncio.ensure_future(store.discard(key))
            _cleanup.add(t)
            t.add_done_callback(_cleanup.discard)

        task.add_done_callback(later)
        raise
    except (errors.Conflict, StorageUnreachable):
        raise  # the key existed (not ours to remove), or no connection was ever made
    except BaseException:
        await store.discard(key)
        raise


async def _record(
    ctx: RequestContext, store: MediaStore, owner: str, key: str, bucket: str, content_type: str, size: int
) -> MediaObject:
    """Insert the row for a stored object (once per key). Any failure removes the object."""
    from psycopg import errors as pg_errors

    params = {"owner": owner, "bucket": bucket, "key": key, "content_type": content_type, "size": size}
    db = ctx.services.db
    try:
        row = await db.fetchrow(queries.INSERT, params, principal=ctx.principal, service=True)
        if row is None:  # recorded already (a repeated or concurrent confirm)
            row = await db.fetchrow(queries.SELECT_BY_KEY, params, principal=ctx.principal)
            if row is None or row["status"] != "stored":
                raise errors.NotFound("no such upload", code="MEDIA_NOT_FOUND")
            return _media(row, store)
    except errors.NotFound:
        raise
    except pg_errors.ForeignKeyViolation:
        await store.discard(key)
        raise errors.Forbidden("the caller has no account to own media", code="ACCOUNT_NOT_FOUND") from None
    except BaseException:
        await store.discard(key)
        raise
    json_log.log("info", "media stored", request_id=ctx.request_id, key=key, size=size, content_type=content_type)
    return _media(row, store)


# -- presigned upload --------------------------------------------------------------------------


async def presign(ctx: RequestContext) -> PresignedUpload:
    s = _settings(ctx)
    body: PresignBody = ctx.body
    owner = _owner(ctx)
    declared = rules.normalize_declared(body.content_type)
    if declared not in rules.EXTENSION:  # the bytes are checked at confirm; the name must be one of ours now
        raise errors.UnsupportedMediaType(
            f"content_type must be one of: {', '.join(sorted(rules.allowed_types(body.bucket)))}",
            code="UNSUPPORTED_FILE_TYPE",
        )
    content_type = rules.check_type(body.bucket, sniffed=declared, declared=None, filename=body.filename)
    rules.check_size(body.bucket, body.content_length, s)
    store = MediaStore.of(ctx.services)
    await quota.charge_upload(ctx, s)
    key = rules.new_key(body.bucket, owner, content_type)
    expires = s.upload_presign_expires_seconds
    # two independent Redis calls, on two pooled connections: one round trip of latency
    # (a key noted for a refused presign is never PUT; the sweep drops it for free)
    await asyncio.gather(
        quota.charge_bytes(ctx, s, body.content_length),
        sweep.remember(ctx.services, key, expires, s.upload_orphan_grace_seconds),
    )
    url, headers = await store.presign_put(key, content_type, body.content_length, expires)
    return PresignedUpload(
        key=key, bucket=body.bucket, upload_url=url, headers=headers, expires_in=expires,
        public_url=store.public_url(key), confirm_url=CONFIRM_PATH,
    )  # fmt: skip


async def confirm(ctx: RequestContext) -> MediaObject:
    s = _settings(ctx)
    body: ConfirmBody = ctx.body
    owner = _owner(ctx)
    parsed = rules.parse_key(body.key)
    if parsed.user_id != owner:  # someone else's key: indistinguishable from a missing one
        raise errors.NotFound("no such upload", code="MEDIA_NOT_FOUND")
    store = MediaStore.of(ctx.services)
    head = await store.head(parsed.key, SNIFF_BYTES)
    if head is None:
        raise errors.NotFound("nothing was uploaded to this key (PUT it first)", code="MEDIA_NOT_FOUND")
    problem = _mismatch(parsed, head.size, head.content_type, sniff(head.first_bytes), s)
    if problem is not None:
        await store.discard(parsed.key)
        json_log.log("warning", "upload refused at confirm", request_id=ctx.request_id, key=parsed.key, problem=problem)
        raise errors.Unprocessable(f"the uploaded object was removed: {problem}", code="UPLOAD_MISMATCH")
    return await _record(ctx, store, owner, parsed.key, parsed.bucket, parsed.content_type, head.size)


def _mismatch(
    key: rules.ParsedKey, size: int, stored_type: str | None, sniffed: str | None, s: UploadMediaSettings
) -> str | None:
    if size <= 0:
        return "the object is empty"
    cap = rules.max_bytes(key.bucket, s)
    if size > cap:
        return f"{size} bytes is above the {cap} byte cap of {key.bucket}"
    if (stored_type or "").split(";")[0].strip().lower() != key.content_type:
        return f"stored as {stored_type!s:.60}, presigned as {key.content_type}"
    if sniffed != key.content_type:
        return f"the bytes are {sniffed or 'of no accepted type'}, presigned as {key.content_type}"
    return None


# -- list and delete -------------------------------------------------------------------------


def _cursor(row: dict[str, Any]) -> str:
    raw = f"{row['created_at'].isoformat()}|{row['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, ident = raw.partition("|")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when, UUID(ident)
    except ValueError:
        raise errors.ValidationFailed("cursor is not one this function issued", code="INVALID_CURSOR") from None


async def list_media(ctx: RequestContext) -> MediaPage:
    q: ListQuery = ctx.query
    after_at, after_id = _parse_cursor(q.cursor) if q.cursor else (None, None)
    rows = await ctx.services.db.fetch(
        queries.LIST,
        {"owner": _owner(ctx), "bucket": q.bucket, "after_at": after_at, "after_id": after_id, "limit": q.limit + 1},
        principal=ctx.principal,
        read_only=True,
    )
    store = MediaStore.of(ctx.services)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return MediaPage(items=[_media(r, store) for r in rows], next_cursor=_cursor(rows[-1]) if more and rows else None)


async def delete(ctx: RequestContext) -> Deleted:
    raw = ctx.path_params.get("media_id", "")
    try:
        media_id = UUID(raw)
    except ValueError:
        raise errors.ValidationFailed("the id is not a uuid", code="INVALID_ID") from None
    _owner(ctx)
    db = ctx.services.db
    row = await db.fetchrow(queries.MARK_DELETED, {"id": media_id}, principal=ctx.principal, service=True)
    if row is None:  # missing, or someone else's (RLS hides it): the same answer
        raise errors.NotFound("no such media", code="MEDIA_NOT_FOUND")
    await MediaStore.of(ctx.services).delete(row["object_key"])
    await db.fetch(queries.DELETE, {"id": media_id}, principal=ctx.principal, service=True)
    return Deleted(id=media_id)
