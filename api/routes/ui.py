"""The dashboard: static files from `web/` under /ui, `/` redirecting there, and the favicon.

The files hold no data: every job, dataset and model the pages show is read by the browser from the public API
with the user's key (api/auth.py lets these paths through without one). They are served under a
Content-Security-Policy of `default-src 'self'`: no inline script or style, nothing from another origin, so a
model card or a dataset value that holds markup cannot run in the page. Not part of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse

import web
from core.errors import NotFound

router = APIRouter(include_in_schema=False)
WEB_DIR = Path(web.__file__).resolve().parent
# Only these are served: the package's __init__.py (and anything else that lands in the folder) is not.
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".ico": "image/x-icon",
               ".png": "image/png", ".txt": "text/plain; charset=utf-8"}
CSP = "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; form-action 'self'"
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (FileResponse sends an ETag): an upgraded server's pages show at once.
    "Cache-Control": "no-cache",
}


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.api_route("/ui", methods=["GET", "HEAD"])
@router.api_route("/ui/", methods=["GET", "HEAD"])
def index() -> FileResponse:
    return _file(WEB_DIR / "index.html")


@router.api_route("/favicon.ico", methods=["GET", "HEAD"])
def favicon() -> FileResponse:
    return _file(WEB_DIR / "favicon.ico")


@router.api_route("/ui/{file_path:path}", methods=["GET", "HEAD"])
def static_file(file_path: Annotated[str, PathParam(max_length=200)]) -> FileResponse:
    # A NUL (`%00`) names no file, and resolve() raises on it (a 500): web/ itself stands in, which is refused below.
    path = WEB_DIR if "\0" in file_path else (WEB_DIR / file_path).resolve()
    # Inside web/ only (no `..`), and only the kinds of file the pages are made of.
    if not path.is_relative_to(WEB_DIR) or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise NotFound(f"no dashboard file '{file_path[:100]}'")
    return _file(path)
