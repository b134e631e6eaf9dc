"""Bearer API keys: every path but /healthz and /readyz needs one when FTSERVE_API_KEYS is set."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_body
from core.errors import Unauthorized

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, *, keys: dict[str, str]) -> None:
        self.app = app
        self.keys = keys

    def _owner_for(self, header: str | None) -> str:
        if not header or not header.lower().startswith("bearer "):
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        given = header[7:].strip().encode()
        for key, owner in self.keys.items():
            if hmac.compare_digest(given, key.encode()):
                return owner
        raise Unauthorized("invalid API key")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.keys:
            state["owner"] = "default"
        elif scope["path"] not in OPEN_PATHS:
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
            try:
                state["owner"] = self._owner_for(headers.get("authorization"))
            except Unauthorized as exc:
                from fastapi.responses import JSONResponse

                response = JSONResponse(error_body("unauthorized", exc.message), status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
