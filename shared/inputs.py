"""A request's input: the body cap, the capped read, JSON parsing and validation.

The pipeline reads a body only after authentication and the rate limit have admitted the
request (`shared.pipeline`), and never more of it than the route's cap: a declared
`Content-Length` above the cap is refused before anything runs, a streamed body the moment
it passes the cap. Validation errors name the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from shared import errors
from shared.context import header_map
from shared.envelope import loads

#: the cap on a JSON body when the route sets none: the functions' JSON bodies are a few KiB
#: (50 swipes are about 4 KiB); routes that take more say so
DEFAULT_MAX_BODY = 64 * 1024


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def parse_model(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = _validation_details(exc)
        first = details[0] if details else {"field": where, "message": "invalid"}
        raise errors.ValidationFailed(
            f"invalid {where}: {first['field']}: {first['message']}", details=details
        ) from None


def too_large(limit: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(f"body larger than {limit} bytes", details={"max_bytes": limit})


def check_declared_size(headers: dict[str, str], limit: int) -> None:
    """413 when the declared `Content-Length` is above `limit`; reads nothing."""
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing (413) as soon as it passes `limit`; never reads the rest."""
    check_declared_size(header_map(request.scope), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json_body(request: Request, model: type[BaseModel], limit: int) -> BaseModel:
    """Read at most `limit` bytes, then parse JSON (an empty body is `{}`) and validate."""
    raw = await read_body(request, limit)
    ctype = request.headers.get("content-type", "")
    if raw.strip() == b"":
        data: Any = {}
    elif ctype and "json" not in ctype:
        raise errors.UnsupportedMediaType("send the body as application/json", code="UNSUPPORTED_CONTENT_TYPE")
    else:
        try:
            data = loads(raw)
        except Exception:
            raise errors.BadRequest("the body is not valid JSON", code="INVALID_JSON") from None
    return parse_model(model, data, "body")
