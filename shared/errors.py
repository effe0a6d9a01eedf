"""Domain errors. They carry a stable code and a message, never an HTTP status:
`shared.envelope.STATUS_BY_ERROR` is the one place that maps them to status codes."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    code = "INTERNAL_ERROR"
    default_message = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        if code:
            self.code = code
        self.details = details
        self.headers = headers or {}


class BadRequest(AppError):
    code = "BAD_REQUEST"
    default_message = "the request is malformed"


class ValidationFailed(BadRequest):
    code = "VALIDATION_ERROR"
    default_message = "the request did not validate"


class Unauthenticated(AppError):
    code = "UNAUTHENTICATED"
    default_message = "authentication required"


class Forbidden(AppError):
    code = "FORBIDDEN"
    default_message = "not allowed"


class NotFound(AppError):
    code = "NOT_FOUND"
    default_message = "not found"


class MethodNotAllowed(AppError):
    code = "METHOD_NOT_ALLOWED"
    default_message = "method not allowed"


class Conflict(AppError):
    code = "CONFLICT"
    default_message = "conflict"


class PayloadTooLarge(AppError):
    code = "PAYLOAD_TOO_LARGE"
    default_message = "the request body is too large"


class UnsupportedMediaType(AppError):
    code = "UNSUPPORTED_MEDIA_TYPE"
    default_message = "unsupported media type"


class Unprocessable(AppError):
    code = "UNPROCESSABLE"
    default_message = "the request could not be processed"


class RateLimited(AppError):
    code = "RATE_LIMITED"
    default_message = "too many requests"


class ServiceUnavailable(AppError):
    code = "SERVICE_UNAVAILABLE"
    default_message = "a backing service is unavailable; try again"


class DependencyTimeout(ServiceUnavailable):
    code = "DEPENDENCY_TIMEOUT"
    default_message = "a backing service did not answer in time"
