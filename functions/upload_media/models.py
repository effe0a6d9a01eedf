"""Request and response models of upload-media (they also build its OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from functions.upload_media.rules import Bucket


class PresignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket: Bucket = Field(description="where the file goes: avatars, posts, products, covers, backgrounds or videos")
    content_type: str = Field(
        max_length=100,
        description="the file's media type, e.g. video/mp4; signed into the URL and checked against the bytes at confirm",
    )
    content_length: int = Field(ge=0, strict=True, description="the file's exact size in bytes; signed into the URL")
    filename: str | None = Field(
        default=None, max_length=255,
        description="the file's name on the device; only its extension is checked (it must agree with content_type)",
    )


class ConfirmBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=300, description="the object key the presign call returned")


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=100, description="items per page")
    cursor: str | None = Field(default=None, max_length=200, description="next_cursor of the previous page")
    bucket: Bucket | None = Field(default=None, description="only this bucket")


class MediaObject(BaseModel):
    id: UUID = Field(description="the object's id (DELETE /functions/v1/upload-media/{id})")
    bucket: Bucket
    key: str = Field(description="the object key: {bucket}/{user id}/{time-sortable id}.{ext}")
    url: str = Field(description="the public URL")
    content_type: str = Field(description="the type sniffed from the file's bytes")
    size_bytes: int
    status: Literal["stored"] = "stored"
    created_at: datetime


class MediaPage(BaseModel):
    items: list[MediaObject]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class PresignedUpload(BaseModel):
    key: str = Field(description="the object key to PUT to and then confirm")
    bucket: Bucket
    upload_url: str = Field(description="presigned PUT URL")
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str] = Field(description="headers the PUT must carry exactly (they are signed)")
    expires_in: int = Field(description="seconds the URL stays valid (checked when the upload starts)")
    public_url: str = Field(description="where the file is served once confirmed")
    confirm_url: str = Field(description="POST here with {key} after the PUT succeeded")


class Deleted(BaseModel):
    id: UUID
    deleted: bool = True
