"""The ftserve Python client: `from ftserve import Client, AsyncClient`.

Needs httpx and pydantic only (no torch, transformers or any of the server's packages).
"""

from __future__ import annotations

__version__ = "0.1.0"

from ftserve._client import AsyncClient, Client
from ftserve.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    ConflictError,
    DeadlineExceededError,
    FtserveError,
    InternalServerError,
    InvalidRequestError,
    JobWaitTimeout,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "DeadlineExceededError",
    "FtserveError",
    "InternalServerError",
    "InvalidRequestError",
    "JobWaitTimeout",
    "NotFoundError",
    "NotReadyError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "__version__",
]
