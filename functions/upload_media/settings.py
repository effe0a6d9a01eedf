"""Settings for upload-media: the shared keys plus this function's own."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator

from shared.settings import CoreSettings

MiB = 1024 * 1024
#: the S3 API host: it answers signed requests only, so a URL on it is never publicly readable
R2_API_HOST_SUFFIX = ".r2.cloudflarestorage.com"


class UploadMediaSettings(CoreSettings):
    # Cloudflare R2 (S3 API). One R2 bucket; the API's "buckets" (avatars, posts ...) are key
    # prefixes inside it.
    r2_endpoint_url: str | None = None
    """The S3 API endpoint (`https://<account>.r2.cloudflarestorage.com`); derived from
    R2_ACCOUNT_ID when unset."""
    r2_account_id: str | None = None
    """The Cloudflare account id, from which the endpoint derives."""
    r2_bucket: str | None = None
    """The R2 bucket that holds every upload."""
    r2_access_key_id: str | None = None
    """R2 API token's access key id."""
    r2_secret_access_key: str | None = None
    """R2 API token's secret access key (secret)."""
    r2_public_url: str | None = Field(default=None, validate_default=True)
    """Where the bucket's objects are publicly readable: the bucket's r2.dev URL or a custom
    domain connected to it (https://media.example.com). Every `url` upload-media returns
    starts with it. Required once R2 is configured: the S3 API host is not publicly readable."""

    upload_max_image_bytes: int = 5 * MiB
    """Size cap of an image (avatars, posts, products), in bytes."""
    upload_max_cover_bytes: int = 10 * MiB
    """Size cap of a cover or background image, in bytes."""
    upload_max_video_bytes: int = 100 * MiB
    """Size cap of a video, in bytes."""
    upload_inline_max_bytes: int = 4 * MiB
    """Files up to this size may pass through the function (a Lambda request body is capped at 6
    MB); anything larger goes by presigned PUT"""
    upload_spool_memory_bytes: int = 256 * 1024
    """How much of an inline upload is held in memory before it spills to a temp file"""
    upload_presign_expires_seconds: int = 300
    """Lifetime of a presigned PUT URL (R2 checks it when the upload starts)"""
    upload_orphan_grace_seconds: int = 3600
    """How long after a presigned URL expires an unconfirmed object may stay before the
    scheduled sweep removes it (the PUT may start just before expiry and take a while)"""

    # per-user quotas by tier, through the shared limiter (inline and presigned uploads alike)
    upload_hourly_free: int = 30
    """Uploads per hour for the free tier."""
    upload_hourly_paid: int = 300
    """Uploads per hour for the paid tier."""
    upload_hourly_admin: int = 3000
    """Uploads per hour for admins."""
    upload_daily_mib_free: int = 500
    """MiB per day for the free tier (each upload is charged its size rounded up to a MiB)."""
    upload_daily_mib_paid: int = 5 * 1024
    """MiB per day for the paid tier."""
    upload_daily_mib_admin: int = 20 * 1024
    """MiB per day for admins."""

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
