"""Settings for upload-media: the shared keys plus this function's own."""

from __future__ import annotations

from shared.settings import CoreSettings

MiB = 1024 * 1024


class UploadMediaSettings(CoreSettings):
    # Cloudflare R2 (S3 API): R2_ENDPOINT_URL, or R2_ACCOUNT_ID to derive it. One R2 bucket;
    # the API's "buckets" (avatars, posts ...) are key prefixes inside it.
    r2_endpoint_url: str | None = None
    r2_account_id: str | None = None
    r2_bucket: str | None = None
    r2_access_key_id: str | None = None
    r2_secret_access_key: str | None = None
    r2_public_url: str | None = None

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
