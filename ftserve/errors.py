"""Exceptions: one class per error `type` of the API, all `APIError`s; `APIConnectionError` when no answer came.

The classes carry what the server said (`status`, `type`, `message`, `details`) and never the request's
headers, so an API key cannot end up in a traceback or a log line.
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class FtserveError(Exception):
    """Base of everything the client raises."""


class APIError(FtserveError):
    """The server answered with an error (`{"error": {"type", "message", "details"}}`)."""

    def __init__(self, message: str, *, status: int | None, type: str, details: list[Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.details = details or []
        self.headers = headers or {}

    def __str__(self) -> str:
        return f"{self.status or '-'} {self.type}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, type={self.type!r}, message={self.message!r})"


class InvalidRequestError(APIError):
    """`validation_error` (422): the request can be fixed; `message` says what is wrong."""


class AuthenticationError(APIError):
    """`unauthorized` (401): no API key, or a wrong one."""


class PermissionDeniedError(APIError):
    """`forbidden` (403): e.g. changing another owner's shared model."""


class NotFoundError(APIError):
    """`not_found` (404): an unknown id or model ref (or another owner's)."""


class ConflictError(APIError):
    """`conflict` (409): the request clashes with the current state."""


class PayloadTooLargeError(APIError):
    """`payload_too_large` (413)."""


class RateLimitError(APIError):
    """`rate_limited` (429). `retry_after` is the server's `Retry-After` in seconds, when it gave one."""

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"))


class NotReadyError(APIError):
    """`not_ready` (503): a dependency of the server is down."""


class DeadlineExceededError(APIError):
    """`timeout` (504): the request ran past the server's deadline."""


class InternalServerError(APIError):
    """`internal` (500), or any 5xx without the error shape: a server bug, never bad input."""


class APIConnectionError(FtserveError):
    """No answer: the connection failed, dropped or timed out (after the retries that were safe to make)."""


class JobWaitTimeout(FtserveError, TimeoutError):
    """`jobs.wait(..., timeout=…)` ran out before the job ended; `job` is its last state."""

    def __init__(self, message: str, *, job: Any) -> None:
        super().__init__(message)
        self.job = job


BY_TYPE: dict[str, type[APIError]] = {
    "validation_error": InvalidRequestError,
    "unauthorized": AuthenticationError,
    "forbidden": PermissionDeniedError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "payload_too_large": PayloadTooLargeError,
    "rate_limited": RateLimitError,
    "not_ready": NotReadyError,
    "timeout": DeadlineExceededError,
    "internal": InternalServerError,
}
STATUS_OF_TYPE = {"validation_error": 422, "unauthorized": 401, "forbidden": 403, "not_found": 404, "conflict": 409,
                  "payload_too_large": 413, "rate_limited": 429, "not_ready": 503, "timeout": 504, "internal": 500}
_TYPE_OF_STATUS = {status: type_ for type_, status in STATUS_OF_TYPE.items()} | {400: "validation_error",
                                                                               405: "validation_error"}


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from datetime import UTC, datetime
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer


def make_error(*, status: int | None, body: Any, headers: dict[str, str] | None = None) -> APIError:
    """The exception for an error shape (`body` parsed JSON, or anything else a proxy may have sent)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("type"), str):
        type_ = error["type"]
        message = str(error.get("message") or "")
        details = error.get("details") if isinstance(error.get("details"), list) else []
    else:
        type_ = _TYPE_OF_STATUS.get(status or 0, "internal" if (status or 500) >= 500 else "http_error")
        text = body if isinstance(body, str) else json.dumps(body)
        message = f"HTTP {status}: {text[:500]}" if text else f"HTTP {status}"
        details = []
    cls = BY_TYPE.get(type_, InternalServerError if (status or 0) >= 500 else APIError)
    if status is None:
        status = STATUS_OF_TYPE.get(type_)
    return cls(message, status=status, type=type_, details=details, headers=headers)


def error_from_response(response: httpx.Response) -> APIError:
    """The response must have been read."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return make_error(status=response.status_code, body=body,
                      headers={k.lower(): v for k, v in response.headers.items()
                               if k.lower() in ("retry-after", "www-authenticate", "content-type")})
