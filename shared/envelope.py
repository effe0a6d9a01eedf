"""The response envelope the apps' existing clients read, and the one error-to-status map.

    {"success": true, "data": ..., "metadata": {...}}
    {"success": false, "error": {"code": "...", "message": "...", "request_id": "..."}}
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response

from shared import errors

STATUS_BY_ERROR: dict[type[errors.AppError], int] = {
    errors.BadRequest: 400,
    errors.ValidationFailed: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.Unprocessable: 422,
    errors.RateLimited: 429,
    errors.ServiceUnavailable: 503,
    errors.DependencyTimeout: 503,
    errors.AppError: 500,
}


def status_for(exc: errors.AppError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]  # type: ignore[index]
    return 500


def _default(obj: Any) -> Any:
    if isinstance(obj, decimal.Decimal):
        # money is exact: sent as a string, never a float
        return str(obj)
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, dt.timedelta):
        return obj.total_seconds()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, (bytes, bytearray)):
            return bytes(content)
        return dumps(content)


def success_body(data: Any, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"success": True, "data": data, "metadata": metadata or {}}


def error_body(code: str, message: str, request_id: str | None, details: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if details is not None:
        err["details"] = details
    return {"success": False, "error": err}


def error_response(exc: errors.AppError, request_id: str | None) -> JSONResponse:
    headers = {"Cache-Control": "private, no-store", **exc.headers}
    return JSONResponse(
        error_body(exc.code, exc.message, request_id, exc.details),
        status_code=status_for(exc),
        headers=headers,
    )
