"""Settings for upload-media: the shared keys plus this function's own."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator

from shared.settings import CoreSettings

MiB = 1024 * 1024
#: the S3 API host: it answers signed requests only, so a URL on it is never publicly readable
R2_API_HOST_SUFFIX = ".r2.cloudflarestorage.com"


class UploadMediaSettings(CoreSettings):
    # Cloudflare R2 (S3 API): R2_ENDPOINT_URL, or R2_ACCOUNT_ID to derive it. One R2 bucket;
    # the API's "buckets" (avatars, posts ...) are key prefixes inside it.
    r2_endpoint_url: str | None = None
    r2_account_id: str | None = None
    r2_bucket: str | None = None
    r2_access_key_id: str | None = None
    r2_secret_access_key: str | None = None
    r2_public_url: str | None = Field(default=None, validate_default=True)
    """Where the bucket's objects are publicly readable: the bucket's r2.dev URL or a custom
    domain connected to it (https://media.example.com). Every `url` upload-media returns
    starts with it. Required once R2 is configured: the S3 API host is not publicly readable."""

    # size caps per bucket (bytes): images (avatars, posts, products), covers and
    # backgrounds, videos
    upload_max_image_bytes: int = 5 * MiB
    upload_max_cover_bytes: int = 10 * MiB
    upload_max_video_bytes: int = 100 * MiB
    #: files up to this size may pass through the function (a Lambda request body is capped
    #: at 6 MB); anything larger goes by presigned PUT
    upload_inline_max_bytes: int = 4 * MiB
    #: how much of an inline upload is held in memory before it spills to a temp file
    upload_spool_memory_bytes: int = 256 * 1024
    #: lifetime of a presigned PUT URL (R2 checks it when the upload starts)
    upload_presign_expires_seconds: int = 300
    #: how long after a presigned URL expires an unconfirmed object may stay before the
    #: scheduled sweep removes it (the PUT may start just before expiry and take a while)
    upload_orphan_grace_seconds: int = 3600

    # per-user quotas by tier, through the shared limiter: uploads per hour (inline and
    # presigned) and MiB per day (each upload is charged its size rounded up to a MiB)
    upload_hourly_free: int = 30
    upload_hourly_paid: int = 300
    upload_hourly_admin: int = 3000
    upload_daily_mib_free: int = 500
    upload_daily_mib_paid: int = 5 * 1024
    upload_daily_mib_admin: int = 20 * 1024

    @field_validator("r2_public_url")
    @classmethod
    def _public_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Refuse a configuration whose returned URLs would not load (the key is named by
        `Settings.load`): R2 configured without a public URL, or one on the S3 API host."""
        configured = any(info.data.get(k) for k in ("r2_endpoint_url", "r2_account_id", "r2_bucket"))
        if v is None:
            if configured:
                raise ValueError(
                    "required when R2 is configured: the bucket's public r2.dev URL or a custom domain "
                    "(objects are not publicly readable on the S3 API host)"
                )
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("must be an http(s) base URL without a query, e.g. https://media.example.com")
        if parts.hostname.endswith(R2_API_HOST_SUFFIX):
            raise ValueError(
                "is the S3 API host, which is not publicly readable: use the bucket's r2.dev URL or a custom domain"
            )
        return v.rstrip("/")
