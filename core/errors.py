"""Domain errors. The API maps each class to one status code and error type (api/errors.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s'\"/:]+/)+([^\s'\"/:]+)")


def scrub_paths(message: str, path: Path | None = None) -> str:
    """Messages name a file by its name only, never by where the server keeps it (`/srv/data/models/x/1/config.json`
    → `config.json`): an error a user reads must not map the server's disk."""
    if path is not None:
        message = message.replace(str(path), path.name).replace(str(path.parent) + "/", "")
    return _ABSOLUTE_PATH.sub(r"\1", message)


class FtserveError(Exception):
    def __init__(self, message: str, *, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class ValidationFailed(FtserveError):
    """The request can be fixed by the user (422)."""


class NotFound(FtserveError):
    """An unknown id or model ref (404)."""


class Conflict(FtserveError):
    """The request clashes with the current state (409)."""


class Unauthorized(FtserveError):
    """Missing or wrong API key (401)."""


class Forbidden(FtserveError):
    """The caller may see the resource but not do this to it, e.g. change another owner's shared model (403)."""


class PayloadTooLarge(FtserveError):
    """Upload over the size limit (413)."""


class RateLimited(FtserveError):
    """A full queue (429)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(FtserveError):
    """A dependency is down (503)."""


class DeadlineExceeded(FtserveError):
    """A request past its deadline (504)."""


class ClientLeft(FtserveError):
    """The client closed the connection before its request was computed (499, never read by anyone)."""


class UserError(FtserveError):
    """A training job failed because of its data or parameters: the user can fix it."""


class SystemError_(FtserveError):
    """A training job failed for a reason that is ours or the machine's."""
