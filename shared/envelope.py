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


def _fit_ints(obj: Any) -> Any:
    """`obj` with the integers orjson cannot write (past 64 bits) as floats, as orjson itself
    reads them. Such integers come back from jsonb: Postgres keeps a number like 1e20 that a
    body carried, and the database driver reads it as an int."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        return float(obj)
    if isinstance(obj, dict):
        return {k: _fit_ints(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_fit_ints(v) for v in obj]
    return obj


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # the rare slow path: an integer past 64 bits somewhere (anything else fails again)
        return orjson.dumps(_fit_ints(obj), default=_default, option=orjson.OPT_NON_STR_KEYS)


def has_nul(value: Any) -> bool:
    """Whether a decoded JSON value holds U+0000 in any key or string: Postgres text and
    jsonb cannot store it, so such input is refused (or recorded as invalid) up front."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


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
