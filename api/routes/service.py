"""Health, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import ViewerDep
from api.responses import Health, NotReadyBody, Ready
from core.errors import Forbidden

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _checks() -> dict[str, str]:
    from registry.db import check_database
    from worker.dispatch import check_broker

    checks: dict[str, str] = {}
    for name, check in (("database", check_database), ("broker", check_broker)):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # a readiness probe reports every failure instead of raising
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    return checks


@router.get("/readyz", response_model=Ready, responses={503: {"model": NotReadyBody, "description": "A check failed."}})
async def readyz() -> Any:
    checks = await anyio.to_thread.run_sync(_checks)
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return JSONResponse(
        {"status": "not_ready", "checks": checks,
         "error": {"type": "not_ready", "message": f"not ready: {failing}", "details": []}},
        status_code=503,
    )


@router.get("/metrics", response_class=Response, responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."}})
async def metrics(viewer: ViewerDep) -> Response:
    # Labels name every owner's model versions: with keys, only an admin key (a scraper's) may read them.
    if not viewer.admin:
        raise Forbidden("/metrics shows every owner's models; it needs an admin key (FTSERVE_ADMIN_KEYS)")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
