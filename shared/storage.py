"""Cloudflare R2 through the S3 API, with a boto3 client built lazily on first use.

boto3 costs ~180 ms to import and ~250 ms more to build an S3 client, so only
upload-media pays it, and only when it first touches storage. R2 rejects the CRC32
checksum headers boto3 >= 1.36 sends by default: checksums are `when_required`.
"""

from __future__ import annotations

import threading
from typing import Any

from shared.settings import ConfigError


class Storage:
    def __init__(
        self,
        *,
        endpoint_url: str | None,
        bucket: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        region: str = "auto",
        public_base_url: str | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = region
        self.public_base_url = (public_base_url or "").rstrip("/") or None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, s: Any) -> Storage:
        bucket = getattr(s, "r2_bucket", None)
        if not bucket:
            raise ConfigError("R2_BUCKET is not set")
        account = getattr(s, "r2_account_id", None)
        endpoint = getattr(s, "r2_endpoint_url", None) or (
            f"https://{account}.r2.cloudflarestorage.com" if account else None
        )
        if not endpoint:
            raise ConfigError("R2_ENDPOINT_URL (or R2_ACCOUNT_ID) is not set")
        return cls(
            endpoint_url=endpoint,
            bucket=bucket,
            access_key_id=getattr(s, "r2_access_key_id", None),
            secret_access_key=getattr(s, "r2_secret_access_key", None),
            public_base_url=getattr(s, "r2_public_url", None),
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    self._client = boto3.session.Session().client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        aws_access_key_id=self.access_key_id,
                        aws_secret_access_key=self.secret_access_key,
                        region_name=self.region,
                        config=Config(
                            signature_version="s3v4",
                            s3={"addressing_style": "path"},
                            request_checksum_calculation="when_required",
                            response_checksum_validation="when_required",
                            connect_timeout=self.connect_timeout,
                            read_timeout=self.read_timeout,
                            # no retry inside a request: a retry sleeps; callers decide
                            retries={"max_attempts": 1, "mode": "standard"},
                        ),
                    )
        return self._client

    def public_url(self, key: str) -> str:
        """The object's public URL. Never one on the S3 API endpoint: R2 serves objects
        publicly only from the bucket's r2.dev URL or a custom domain (R2_PUBLIC_URL)."""
        if not self.public_base_url:
            raise ConfigError("R2_PUBLIC_URL is not set: objects have no public URL")
        return f"{self.public_base_url}/{key}"
