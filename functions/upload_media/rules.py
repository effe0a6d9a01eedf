"""The upload rules, written once and used by both paths (inline and presigned): which
types each bucket takes, its size cap, what a declared type or a file name may say, and
the shape of an object key.

    kind = check_type("avatars", sniffed="image/png", declared="image/png", filename="me.png")
    key = new_key("avatars", user_id, "image/png")   # avatars/<uid>/<uuid7 hex>.png
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Literal

from functions.upload_media.settings import UploadMediaSettings
from functions.upload_media.sniff import GIF, JPEG, MP4, PNG, QUICKTIME, WEBM, WEBP
from shared import errors

Bucket = Literal["avatars", "posts", "products", "covers", "backgrounds", "videos"]
BUCKETS: tuple[str, ...] = ("avatars", "posts", "products", "covers", "backgrounds", "videos")

IMAGES = frozenset({JPEG, PNG, WEBP, GIF})
VIDEOS = frozenset({MP4, QUICKTIME, WEBM})

#: the extension a stored object gets for its (sniffed) type
EXTENSION = {JPEG: "jpg", PNG: "png", WEBP: "webp", GIF: "gif", MP4: "mp4", QUICKTIME: "mov", WEBM: "webm"}
TYPE_OF_EXTENSION = {v: k for k, v in EXTENSION.items()}
#: the extensions a client's file name may carry for each type
FILENAME_EXTENSIONS = {
    JPEG: {"jpg", "jpeg", "jpe", "jfif"},
    PNG: {"png"},
    WEBP: {"webp"},
    GIF: {"gif"},
    MP4: {"mp4", "m4v"},
    QUICKTIME: {"mov", "qt"},
    WEBM: {"webm"},
}
#: declared types that name one of ours under another spelling
_ALIASES = {"image/jpg": JPEG, "image/pjpeg": JPEG, "video/x-m4v": MP4}
#: declared types that say nothing about the file (treated as no declaration)
_UNINFORMATIVE = {"", "application/octet-stream", "binary/octet-stream"}


def allowed_types(bucket: str) -> frozenset[str]:
    return VIDEOS if bucket == "videos" else IMAGES


def max_bytes(bucket: str, s: UploadMediaSettings) -> int:
    if bucket == "videos":
        return s.upload_max_video_bytes
    if bucket in ("covers", "backgrounds"):
        return s.upload_max_cover_bytes
    return s.upload_max_image_bytes


def check_bucket(bucket: str | None) -> str:
    if not bucket:
        raise errors.ValidationFailed("the `bucket` field is required", code="BUCKET_REQUIRED")
    if bucket not in BUCKETS:
        raise errors.ValidationFailed(
            f"unknown bucket {bucket[:40]!r}; one of: {', '.join(BUCKETS)}", code="INVALID_BUCKET"
        )
    return bucket


def normalize_declared(declared: str | None) -> str | None:
    """A client's Content-Type, lower-cased, without parameters; None if it says nothing."""
    if declared is None:
        return None
    value = declared.split(";", 1)[0].strip().lower()
    if value in _UNINFORMATIVE:
        return None
    return _ALIASES.get(value, value)


def filename_extension(filename: str | None) -> str | None:
    if not filename:
        return None
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if "." not in base.strip("."):
        return None
    return base.rsplit(".", 1)[1].lower() or None


def check_type(bucket: str | None, *, sniffed: str | None, declared: str | None, filename: str | None) -> str:
    """The stored type, or a 415 saying why not: the bytes must be a type the bucket
    takes (any accepted type while the bucket is not known yet), and a declared type or a
    file name extension must agree with the bytes."""
    allowed = allowed_types(bucket) if bucket is not None else IMAGES | VIDEOS
    names = ", ".join(sorted(allowed))
    if sniffed is None:
        where = f" for {bucket}" if bucket else ""
        raise errors.UnsupportedMediaType(
            f"the file is not a supported type ({names}{where})", code="UNSUPPORTED_FILE_TYPE"
        )
    if sniffed not in allowed:
        raise errors.UnsupportedMediaType(
            f"{bucket} takes {names}; this file is {sniffed}", code="TYPE_NOT_ALLOWED_IN_BUCKET"
        )
    check_declared(sniffed, declared=declared, filename=filename)
    return sniffed


def check_declared(actual: str, *, declared: str | None, filename: str | None) -> None:
    d = normalize_declared(declared)
    if d is not None and d != actual:
        raise errors.UnsupportedMediaType(
            f"declared type {d[:60]} does not match the file's content ({actual})", code="CONTENT_TYPE_MISMATCH"
        )
    ext = filename_extension(filename)
    if ext is not None and ext not in FILENAME_EXTENSIONS[actual]:
        raise errors.UnsupportedMediaType(
            f"the file name's extension .{ext[:16]} does not match the file's content ({actual})",
            code="EXTENSION_MISMATCH",
        )


def check_size(bucket: str, size: int, s: UploadMediaSettings) -> None:
    if size <= 0:
        raise errors.ValidationFailed("the file is empty", code="EMPTY_FILE")
    cap = max_bytes(bucket, s)
    if size > cap:
        raise too_large(bucket, cap)


def too_large(bucket: str, cap: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"files in {bucket} may be at most {cap} bytes", code="FILE_TOO_LARGE", details={"max_bytes": cap}
    )


# -- object keys ---------------------------------------------------------------------------


def new_object_id(now_ms: int | None = None) -> str:
    """A UUIDv7 as 32 hex digits: 48 bits of Unix milliseconds, then randomness, so keys
    sort by upload time and never collide in practice (the PUT also refuses to overwrite)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return f"{value:032x}"


def new_key(bucket: str, user_id: str, content_type: str) -> str:
    return f"{bucket}/{user_id}/{new_object_id()}.{EXTENSION[content_type]}"


_KEY = re.compile(
    r"^(?P<bucket>" + "|".join(BUCKETS) + r")/"
    r"(?P<user>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/"
    r"(?P<id>[0-9a-f]{32})\.(?P<ext>" + "|".join(EXTENSION.values()) + r")$"
)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key: str
    bucket: str
    user_id: str
    content_type: str


def parse_key(key: str) -> ParsedKey:
    """A key this function issued, or a 400. Nothing else is ever accepted as a key."""
    m = _KEY.match(key)
    if m is None:
        raise errors.ValidationFailed("not an object key issued by this function", code="INVALID_KEY")
    return ParsedKey(key, m["bucket"], m["user"], TYPE_OF_EXTENSION[m["ext"]])
