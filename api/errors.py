"""The one table from domain errors to HTTP status codes and error types, and the error shape."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core import errors as e

ERROR_TABLE: dict[type[e.FtserveError], tuple[int, str]] = {
    e.ValidationFailed: (422, "validation_error"),
    e.UserError: (422, "validation_error"),
    e.Unauthorized: (401, "unauthorized"),
    e.Forbidden: (403, "forbidden"),
    e.NotFound: (404, "not_found"),
    e.Conflict: (409, "conflict"),
    e.PayloadTooLarge: (413, "payload_too_large"),
    e.RateLimited: (429, "rate_limited"),
    e.NotReady: (503, "not_ready"),
    e.DeadlineExceeded: (504, "timeout"),
    e.ClientLeft: (499, "client_closed_request"),
}
_BY_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "validation_error", 409: "conflict",
              413: "payload_too_large", 422: "validation_error", 429: "rate_limited", 503: "not_ready",
              504: "timeout"}


def error_body(type_: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "details": details or []}}


def status_of(exc: BaseException) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return 500, "internal"


def error_response(exc: e.FtserveError) -> JSONResponse:
    status, type_ = status_of(exc)
    headers = {}
    if isinstance(exc, e.RateLimited):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, e.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(type_, exc.message, exc.details), status_code=status, headers=headers)


def _describe(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
    where = ".".join(loc)
    if err.get("type") == "extra_forbidden":
        return f"unknown field '{where}'"
    if err.get("type") == "missing":
        return f"missing field '{where}'"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def allowed_methods(request: Request) -> str | None:
    """Every method the request's path has, read from the OpenAPI document's path templates:
    Starlette's own `Allow` names only the first route of the path that matched, and a path has one per method."""
    table = getattr(request.app.state, "allowed_methods", None)
    if table is None:
        table = []
        for template, operations in request.app.openapi()["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$")
            methods = {m.upper() for m in operations}  # FastAPI's GET routes do not answer HEAD
            table.append((pattern, ", ".join(sorted(methods))))
        request.app.state.allowed_methods = table
    path = request.scope.get("path", "")
    return next((methods for pattern, methods in table if pattern.match(path)), None)


def install(app: FastAPI) -> None:
    @app.exception_handler(e.FtserveError)
    async def _domain(_: Request, exc: e.FtserveError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        message = "; ".join(_describe(err) for err in errs[:5]) or "invalid request"
        details = [{"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
                   for err in errs]
        return JSONResponse(error_body("validation_error", message, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _BY_STATUS.get(exc.status_code, "internal" if exc.status_code >= 500 else "validation_error")
        headers = dict(getattr(exc, "headers", None) or {})
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's answer to a JSON body that is not UTF-8: a validation error like any other bad body.
            return JSONResponse(error_body("validation_error", "the body could not be read as JSON: send UTF-8 JSON "
                                           "with Content-Type: application/json"), status_code=422)
        if exc.status_code == 405:
            # Starlette names only the first route of the path that matched; a path has one route per method.
            headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
            message = f"{request.method} is not allowed on this path; allowed: {headers['Allow']}"
        return JSONResponse(error_body(type_, message), status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("ftserve.api").exception("unhandled error")
        return JSONResponse(error_body("internal", f"internal error ({type(exc).__name__})"), status_code=500)
