"""Presigned uploads that were never confirmed: found and removed, so R2 holds no object
without a row for long.

Every presign adds its key to one Redis sorted set, scored by the time after which a
confirm can no longer be expected (URL expiry + `UPLOAD_ORPHAN_GRACE_SECONDS`). The
scheduled invocation (`sweep`) takes the due keys in batches, keeps those that have a
row, deletes the objects of the others (one DeleteObjects call per batch; a key never
PUT costs nothing) and drops the batch from the set. The work is proportional to the
uploads presigned, never to the size of the bucket.
"""

from __future__ import annotations

import time
from typing import Any

from functions.upload_media.store import MediaStore

BATCH = 500


def _set_key(kv: Any) -> str:
    return str(kv.key("upload-media", "presigned"))


async def remember(services: Any, key: str, expires_in: int, grace: int) -> None:
    """Note a presigned key (before its URL is handed out)."""
    kv = services.kv
    due_ms = int((time.time() + expires_in + grace) * 1000)
    await kv.execute("ZADD", _set_key(kv), due_ms, key)


async def sweep(services: Any, *, now: float | None = None, batch: int = BATCH) -> dict[str, int]:
    kv = services.kv
    zkey = _set_key(kv)
    now_ms = int((time.time() if now is None else now) * 1000)
    store = MediaStore.of(services)
    removed = confirmed = 0
    while True:
        keys: list[str] = await kv.execute("ZRANGEBYSCORE", zkey, "-inf", now_ms, "LIMIT", 0, batch)
        if not keys:
            break
        rows = await services.db.fetch(
            "select object_key from public.media_objects where object_key = any(%s)", (keys,), service=True
        )
        recorded = {r["object_key"] for r in rows}
        orphans = [k for k in keys if k not in recorded]
        if orphans:
            await store.delete_many(orphans)
        await kv.execute("ZREM", zkey, *keys)
        removed += len(orphans)
        confirmed += len(recorded)
        if len(keys) < batch:
            break
    return {"unconfirmed_removed": removed, "confirmed": confirmed}
