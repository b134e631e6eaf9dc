"""Request bodies under caps: counted as they arrive, refused at once when Content-Length says so.

A multipart dataset upload (`POST /datasets`, streamed to disk by api/uploads.py) may be
`FTSERVE_MAX_UPLOAD_BYTES` plus its multipart envelope; any other body (a JSON body sent to `/datasets`
included, which is read into memory) `FTSERVE_MAX_BODY_BYTES`. A JSON body is also held to the nesting depth
and integer size of the dataset reader (registry/datafiles.py), so no body can make the JSON parser recurse
until it fails.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from core.errors import PayloadTooLarge
from registry.datafiles import JsonBoundsError, json_needs_bounds_check, loads_bounded

UPLOAD_PATHS = frozenset({"/datasets"})
# Model archive imports have a cap of their own (FTSERVE_MAX_IMPORT_BYTES).
IMPORT_PATH = re.compile(r"^/models/[^/]+/versions/?$")
# Boundaries, part headers and the small `name` field around an upload's file.
MULTIPART_ENVELOPE = 64 * 1024


class BodyTooLarge(PayloadTooLarge):
    """Raised from `receive` once a body is over its cap; the middleware answers 413 in its place."""


def _media_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return b""


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    media = _media_type(headers)
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


async def _respond(send: Send, status: int, type_: str, message: str) -> None:
    body = json.dumps(error_body(type_, message)).encode()
    # Connection: close, so a client still sending a body it was refused is cut off rather than read to the end.
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int, max_import_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.max_import_bytes = max_import_bytes

    def _limit(self, scope: Scope) -> tuple[int, str]:
        if scope["method"] == "POST" and _media_type(scope.get("headers", [])) == b"multipart/form-data":
            if scope["path"] in UPLOAD_PATHS:
                return (self.max_upload_bytes + MULTIPART_ENVELOPE,
                        f"the upload limit is {self.max_upload_bytes} bytes")
            if IMPORT_PATH.match(scope["path"]):
                return (self.max_import_bytes + MULTIPART_ENVELOPE,
                        f"the model import limit is {self.max_import_bytes} bytes (FTSERVE_MAX_IMPORT_BYTES)")
        return self.max_body_bytes, f"the limit for a request body is {self.max_body_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, says = self._limit(scope)
        headers = scope.get("headers", [])
        declared = next((v for k, v in headers if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _respond(send, 413, "payload_too_large", f"request body is {int(declared)} bytes; {says}")
            return
        if _is_json(headers):
            await self._json(scope, receive, send, limit=limit, says=says)
        else:
            await self._counted(scope, receive, send, limit=limit, says=says)

    async def _json(self, scope: Scope, receive: Receive, send: Send, *, limit: int, says: str) -> None:
        """JSON bodies are small (capped) and parsed whole by the app anyway: read here, check, replay."""
        parts: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)  # the client left: let the app see it
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _respond(send, 413, "payload_too_large", f"request body is over {limit} bytes; {says}")
                return
            parts.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(parts)
        if json_needs_bounds_check(body):
            try:
                loads_bounded(body.decode("utf-8"))
            except JsonBoundsError as exc:
                await _respond(send, 422, "validation_error", f"request body: {exc}")
                return
            except ValueError:
                pass  # not JSON (or not UTF-8): the app answers that with its own 422, naming the position
        await self.app(scope, _replay([body], None, receive), send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, *, limit: int, says: str) -> None:
        """Other bodies (uploads) stream through; past the cap `receive` raises and the response becomes a 413."""
        size = 0
        cut = started = replaced = False

        async def limited() -> Message:
            nonlocal size, cut
            if cut:
                raise BodyTooLarge(says)
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    cut = True
                    raise BodyTooLarge(says)
            return message

        async def guarded(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # the app's own response to the cut-off body
            if message["type"] == "http.response.start":
                if cut and not started:
                    # Whatever the app made of the cut-off body (a 413, a 400 from a form parser), the client is
                    # told why, in the error shape.
                    replaced = True
                    await _respond(send, 413, "payload_too_large", f"request body is over {limit} bytes; {says}")
                    return
                started = True
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except BodyTooLarge:
            if started or replaced:
                raise
            await _respond(send, 413, "payload_too_large", f"request body is over {limit} bytes; {says}")


def _replay(bodies: list[bytes], first: Message | None, receive: Receive) -> Receive:
    """A `receive` that hands out the body read already, then the client's later messages (a disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": b, "more_body": False} for b in bodies]
    if first is not None:
        pending.append(first)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
