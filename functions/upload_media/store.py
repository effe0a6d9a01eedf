"""The R2 calls upload-media makes, off the event loop.

boto3 is blocking, so every call runs in a worker thread (`asyncio.to_thread`) under the
shared client's connect/read timeouts (`shared.storage`). boto3 itself is imported when the
client is first built, never when this module is. Any transport failure or 5xx becomes a 503
(`STORAGE_UNAVAILABLE`; `StorageUnreachable` when no connection was made, so nothing can
have been written); nothing here retries by sleeping.

Objects are written with `If-None-Match: *`, so a key is never overwritten (R2 and S3 answer
412 when it exists), with the sniffed content type and a year-long immutable Cache-Control.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from shared import errors
from shared.observability import json_log
from shared.settings import ConfigError

CACHE_CONTROL = "public, max-age=31536000, immutable"
T = TypeVar("T")
#: one MediaStore per shared Storage (so its counters live as long as the warm container)
_STORES: weakref.WeakKeyDictionary[Any, MediaStore] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class ObjectHead:
    size: int
    content_type: str | None
    first_bytes: bytes


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    meta = response.get("ResponseMetadata") or {}
    code = meta.get("HTTPStatusCode")
    return int(code) if code is not None else None


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code", ""))
    return ""


class StorageUnavailable(errors.ServiceUnavailable):
    code = "STORAGE_UNAVAILABLE"
    default_message = "media storage is unavailable; try again"


class StorageUnreachable(StorageUnavailable):
    """No connection was made: the request cannot have changed anything in the bucket."""


def _unavailable(exc: BaseException) -> StorageUnavailable:
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return StorageUnreachable()
    return StorageUnavailable()


class MediaStore:
    """The function's view of the bucket. `calls` counts R2 requests (benchmarks read it)."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.calls = 0
        self._client_built = False

    @classmethod
    def of(cls, services: Any) -> MediaStore:
        try:
            storage = services.storage
        except ConfigError as exc:
            raise errors.ServiceUnavailable(f"media storage is not configured: {exc}", code="STORAGE_NOT_CONFIGURED") from None
        store = _STORES.get(storage)
        if store is None:
            store = _STORES[storage] = cls(storage)
        return store

    @property
    def bucket(self) -> str:
        return str(self.storage.bucket)

    def public_url(self, key: str) -> str:
        return str(self.storage.public_url(key))

    async def _run(self, fn: Callable[[Any], T], *, network: bool = True) -> T:
        """`fn(client)` in a worker thread; botocore's failures become domain errors."""
        from botocore.exceptions import BotoCoreError, ClientError

        def call() -> T:
            client = self.storage.client  # the first call also builds the client (~250 ms)
            self._client_built = True
            return fn(client)

        if network:
            self.calls += 1
        try:
            return await asyncio.to_thread(call)
        except ClientError as exc:
            status = _status(exc)
            if status is not None and status < 500:
                raise
            json_log.log("warning", "r2 error", error=repr(exc))
            raise _unavailable(exc) from exc
        except BotoCoreError as exc:  # connect/read timeouts, refused connections ...
            json_log.log("warning", "r2 unreachable", error=repr(exc))
            raise _unavailable(exc) from exc

    async def put(self, key: str, body: IO[bytes], size: int, content_type: str) -> None:
        from botocore.exceptions import ClientError

        try:
            await self._run(
                lambda c: c.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentLength=size, ContentType=content_type,
                    CacheControl=CACHE_CONTROL, IfNoneMatch="*",
                )
            )
        except ClientError as exc:
            if _status(exc) == 412:
                raise errors.Conflict("an object with this key exists already", code="KEY_EXISTS") from None
            raise _unavailable(exc) from exc

    async def head(self, key: str, first: int) -> ObjectHead | None:
        """The object's size, stored type and first `first` bytes in ONE request (a ranged
        GET answers with what a HEAD would, plus the bytes); None if there is no object."""
        from botocore.exceptions import ClientError

        def get(c: Any) -> ObjectHead:
            r = c.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{first - 1}")
            body = r["Body"]
            try:
                data = body.read(first)
            finally:
                body.close()
            size = int(r.get("ContentLength") or 0)
            content_range = r.get("ContentRange") or ""
            if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
                size = int(content_range.rsplit("/", 1)[1])
            return ObjectHead(size=size, content_type=r.get("ContentType"), first_bytes=data)

        try:
            return await self._run(get)
        except ClientError as exc:
            status = _status(exc)
            if status == 404 or _error_code(exc) in ("NoSuchKey", "404"):
                return None
            if status == 416:  # a range on an empty object
                return ObjectHead(size=0, content_type=None, first_bytes=b"")
            raise _unavailable(exc) from exc

    async def delete(self, key: str) -> None:
        """Remove `key` (no error if it is already gone)."""
        from botocore.exceptions import ClientError

        try:
            await self._run(lambda c: c.delete_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if _status(exc) == 404:
                return
            raise _unavailable(exc) from exc

    async def delete_many(self, keys: list[str]) -> None:
        """Remove up to 1,000 keys in one request (missing ones are no error)."""
        from botocore.exceptions import ClientError

        objects = [{"Key": k} for k in keys]
        try:
            await self._run(lambda c: c.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}))
        except ClientError as exc:
            raise _unavailable(exc) from exc

    async def discard(self, key: str) -> None:
        """Best-effort removal after a failure: never raises, survives cancellation."""
        try:
            await asyncio.shield(self.delete(key))
        except BaseException as exc:  # noqa: BLE001 - the original failure is what the caller reports
            json_log.log("error", "r2 object left behind", key=key, error=repr(exc))

    async def presign_put(self, key: str, content_type: str, size: int, expires: int) -> tuple[str, dict[str, str]]:
        """A presigned PUT URL with the type, the exact length, the Cache-Control and
        If-None-Match signed in, and the headers the client must send with it. Signing is
        local (no request to R2)."""
        headers = {"Content-Type": content_type, "Content-Length": str(size), "Cache-Control": CACHE_CONTROL, "If-None-Match": "*"}

        def sign(c: Any) -> str:
            return str(
                c.generate_presigned_url(
                    "put_object",
                    Params={
                        "Bucket": self.bucket, "Key": key, "ContentType": content_type, "ContentLength": size,
                        "CacheControl": CACHE_CONTROL, "IfNoneMatch": "*",
                    },
                    ExpiresIn=expires,
                    HttpMethod="PUT",
                )
            )

        if self._client_built:  # signing is ~0.2 ms of CPU: no thread hop once the client exists
            return sign(self.storage.client), headers
        return await self._run(sign, network=False), headers
