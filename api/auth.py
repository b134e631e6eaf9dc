"""Who is calling: bearer API keys when FTSERVE_API_KEYS is set, a loopback-only single user when it is not.

With keys, every path but /healthz, /readyz and the dashboard's static files (`/`, `/favicon.ico`, `/ui…`: they
hold no data, and every call the pages make carries the key) needs `Authorization: Bearer <key>`; the key's name is the
caller's owner, and names in FTSERVE_ADMIN_KEYS act on every owner's resources. With auth off, the API is
for the machine it runs on: besides binding loopback only (`ftserve api`), it answers only requests addressed to
localhost (a DNS-rebinding page reaches 127.0.0.1 under its own host name) and refuses a state-changing request
whose `Origin` is another site (a cross-site form post carries one; curl and scripts send none).
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_body

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico", "/ui"})
UI_PREFIX = "/ui/"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _headers(scope: Scope) -> dict[str, str]:
    # Header bytes are latin-1 on the wire (RFC 9110); decoding them as UTF-8 fails on a stray byte.
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _host_name(host: str) -> str:
    """'127.0.0.1:8000' → '127.0.0.1', '[::1]:8000' → '[::1]', 'localhost' → 'localhost'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if ":" in host else host


def is_open(path: str) -> bool:
    """A path any caller may read: health probes, and the dashboard's shell (a browser must load it to be asked
    for the key)."""
    return path in OPEN_PATHS or path.startswith(UI_PREFIX)


async def _reject(scope: Scope, receive: Receive, send: Send, status: int, type_: str, message: str,
                  headers: dict[str, str] | None = None) -> None:
    response = JSONResponse(error_body(type_, message), status_code=status, headers=headers)
    await response(scope, receive, send)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, *, keys: dict[str, str], admins: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.keys = keys
        self.admins = admins

    def _owner_for(self, header: str | None) -> str | None:
        if not header or not header.lower().startswith("bearer "):
            return None
        given = header[7:].strip().encode("latin-1")
        owner = None
        for key, name in self.keys.items():  # every key compared, so timing tells nothing about which matched
            if hmac.compare_digest(given, key.encode()):
                owner = name
        return owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        headers = _headers(scope)
        if not self.keys:
            problem = self._loopback_problem(scope, headers)
            if problem is not None:
                await _reject(scope, receive, send, 403, "forbidden", problem)
                return
            state["owner"], state["admin"] = "default", True
        elif not is_open(scope["path"]):
            header = headers.get("authorization")
            owner = self._owner_for(header)
            if owner is None:
                message = "invalid API key" if header else "missing API key: send 'Authorization: Bearer <key>'"
                await _reject(scope, receive, send, 401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})
                return
            state["owner"], state["admin"] = owner, owner in self.admins
        await self.app(scope, receive, send)

    @staticmethod
    def _loopback_problem(scope: Scope, headers: dict[str, str]) -> str | None:
        host = headers.get("host", "")
        if _host_name(host) not in LOOPBACK_HOSTS:
            return ("with auth off, ftserve answers only requests addressed to localhost, 127.0.0.1 or [::1]; "
                    "set FTSERVE_API_KEYS to serve other hosts")
        origin = headers.get("origin")
        if origin is not None and scope["method"] not in SAFE_METHODS:
            expected = f"{scope.get('scheme', 'http')}://{host.strip().lower()}"
            if origin.strip().lower() != expected:
                return (f"cross-site request refused: Origin {origin[:100]!r} is not {expected}; with auth off, "
                        "only pages served by this API (or clients that send no Origin) may change state")
        return None
