"""upload-media: Authenticated media upload to Cloudflare R2.

    POST   /functions/v1/upload-media            multipart: file, bucket (files up to 4 MB)
    POST   /functions/v1/upload-media/presign    {bucket, content_type, content_length, filename?}
    PUT    <upload_url>                          the file, with the returned headers (to R2)
    POST   /functions/v1/upload-media/confirm    {key}
    GET    /functions/v1/upload-media            the caller's media, newest first (?cursor=)
    DELETE /functions/v1/upload-media/{id}
    (scheduled)                                   remove presigned objects never confirmed

The ASGI app (`app`) and the Lambda entry point (`handler`). The logic is in `logic.py`."""

from __future__ import annotations

from typing import Any

from functions.upload_media import logic
from functions.upload_media.models import (
    ConfirmBody, Deleted, ListQuery, MediaObject, MediaPage, PresignBody, PresignedUpload,
)  # fmt: skip
from functions.upload_media.settings import UploadMediaSettings
from shared.app import FunctionApp
from shared.context import RequestContext
from shared.health import add_health_route

fn = FunctionApp("upload-media", settings=UploadMediaSettings, description="Authenticated media upload to Cloudflare R2")
add_health_route(fn, ("database", "redis", "storage"))


@fn.post(
    "/", auth="required", raw_body=True, response=MediaObject, redis_failure="closed", status_code=201,
    summary="Upload a small file (multipart `file` + `bucket`, up to the inline limit); type sniffed from its bytes",
)
async def upload(ctx: RequestContext) -> Any:
    return await logic.upload(ctx)


@fn.post(
    "/presign", auth="required", body=PresignBody, response=PresignedUpload, redis_failure="closed",
    summary="A presigned PUT URL for a large file (type and exact length signed in, short expiry)",
)
async def presign(ctx: RequestContext) -> Any:
    return await logic.presign(ctx)


@fn.post(
    "/confirm", auth="required", body=ConfirmBody, response=MediaObject,
    summary="Check a presigned upload (size, stored type, sniffed bytes, owner) and record it",
)
async def confirm(ctx: RequestContext) -> Any:
    return await logic.confirm(ctx)


@fn.get("/", auth="required", query=ListQuery, response=MediaPage, summary="The caller's media, newest first")
async def list_media(ctx: RequestContext) -> Any:
    return await logic.list_media(ctx)


@fn.delete("/{media_id}", auth="required", response=Deleted, summary="Delete one of the caller's objects (R2 and its row)")
async def delete(ctx: RequestContext) -> Any:
    return await logic.delete(ctx)


@fn.scheduled
async def sweep_unconfirmed(services: Any) -> dict[str, Any]:
    """EventBridge schedule: remove presigned uploads that were never confirmed."""
    from functions.upload_media.sweep import sweep

    return await sweep(services)


app = fn
handler = fn.lambda_handler
