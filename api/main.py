"""Wiring only: settings, middleware, error handlers, routers."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.auth import ApiKeyMiddleware
from api.limits import BodyLimitMiddleware
from api.routes import datasets, evaluations, jobs, model_files, models, predict, pushes, service
from api.streams import EventHub, StreamSlots
from core.settings import Settings, configure_environment, get_settings
from inference.service import InferenceService

log = logging.getLogger("ftserve.api")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # In the background: the API answers (health, jobs, datasets) while torch loads.
    service: InferenceService = app.state.inference

    def warm() -> None:
        try:
            service.warm_up()
        except Exception:
            log.exception("warm-up failed; models will load on their first request")

    threading.Thread(target=warm, name="warm-up", daemon=True).start()
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = configure_environment(settings or get_settings())
    app = FastAPI(title="ftserve", version="0.1.0", lifespan=_lifespan,
                  description="Fine-tune Hugging Face models over REST and serve them at once.")
    app.state.settings = settings
    app.state.inference = InferenceService(settings)
    app.state.stream_slots = StreamSlots(settings.max_streams_per_key)
    app.state.event_hub = EventHub(jobs.read_events)
    errors.install(app)
    for module in (service, datasets, jobs, models, model_files, pushes, evaluations, predict):
        app.include_router(module.router)
    # Added last, runs first: a request without a valid key is refused before its body is read.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes, max_import_bytes=settings.max_import_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_key_map, admins=settings.admin_names)
    return app
