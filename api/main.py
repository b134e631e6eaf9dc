"""Wiring only: settings, middleware, error handlers, routers."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI

from api import errors
from api.auth import ApiKeyMiddleware
from api.limits import BodyLimitMiddleware
from api.responses import COMMON
from api.routes import datasets, evaluations, jobs, model_files, models, predict, pushes, service, ui
from api.streams import EventHub, StreamSlots
from core.settings import Settings, configure_environment, get_settings
from inference.service import InferenceService
from registry.store import ArtifactStore

log = logging.getLogger("ftserve.api")
# An archive upload or a merged export older than this at startup was left by a process that died mid-request.
REQUEST_DIR_TTL = 6 * 3600.0


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # In the background: the API answers (health, jobs, datasets) while torch loads.
    service: InferenceService = app.state.inference

    def warm() -> None:
        try:
            removed = ArtifactStore(app.state.settings.data_dir).sweep_request_dirs(
                older_than_seconds=REQUEST_DIR_TTL)
            if removed:
                log.info("removed %d folder(s) an earlier API process left in imports/", len(removed))
        except OSError:
            log.exception("could not sweep imports/ (left for the next start)")
        try:
            service.warm_up()
        except Exception:
            log.exception("warm-up failed; models will load on their first request")

    threading.Thread(target=warm, name="warm-up", daemon=True).start()
    yield


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the schemas of the bodies that routes read by hand (`api.responses.json_body`)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        from api.routes.model_files import HubImport
        from training.spec import FIELDS, PARAMS, JobRequest

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in (JobRequest, HubImport):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        _task_schemas(schemas, params=PARAMS, fields=FIELDS)
        _add_links(doc)
        _errors_are_json(doc)
        _bodies_by_ref(doc)
        app.openapi_schema = doc
    return app.openapi_schema


# OpenAPI links: how a created resource is reached next (generated clients and schemathesis's stateful phase
# follow them). (source path, method, status) → link name → (target path, method, parameters, request body).
_LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str], dict[str, Any] | None]]] = {
    ("/datasets", "post", "201"): {
        "GetDataset": ("/datasets/{dataset_id}", "get", {"dataset_id": "$response.body#/id"}, None),
        "DeleteDataset": ("/datasets/{dataset_id}", "delete", {"dataset_id": "$response.body#/id"}, None),
        "TrainOnDataset": ("/jobs", "post", {}, {"dataset": {"id": "$response.body#/id"}}),
    },
    ("/jobs", "post", "201"): {
        "GetJob": ("/jobs/{job_id}", "get", {"job_id": "$response.body#/id"}, None),
        "GetJobEvents": ("/jobs/{job_id}/events", "get", {"job_id": "$response.body#/id"}, None),
        "CancelJob": ("/jobs/{job_id}/cancel", "post", {"job_id": "$response.body#/id"}, None),
    },
    ("/models/{name}/versions", "post", "201"): {
        "GetVersion": ("/models/{name}/versions/{version}", "get",
                       {"name": "$response.body#/name", "version": "$response.body#/version"}, None),
        "GetCard": ("/models/{name}/versions/{version}/card", "get",
                    {"name": "$response.body#/name", "version": "$response.body#/version"}, None),
        "ExportVersion": ("/models/{name}/versions/{version}/archive", "get",
                          {"name": "$response.body#/name", "version": "$response.body#/version"}, None),
    },
    ("/models/{name}/versions", "post", "202"): {
        "GetImportJob": ("/jobs/{job_id}", "get", {"job_id": "$response.body#/id"}, None),
    },
}


def _task_schemas(schemas: dict[str, Any], *, params: Mapping[str, Any], fields: Mapping[str, Mapping[str, str]]
                  ) -> None:
    """`JobRequest.hyperparameters` and `.columns` depend on the task: each task's hyperparameters model (defaults
    and bounds) is a component, and JobRequest names them and the column fields per task in `x-task-params` and
    `x-task-columns` (field → default column). The dashboard's job form is built from these."""
    refs = {}
    for task, model in params.items():
        schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        refs[task] = f"#/components/schemas/{model.__name__}"
    request = schemas["JobRequest"]
    request["x-task-params"] = refs
    request["x-task-columns"] = {task: dict(columns) for task, columns in fields.items()}


def _errors_are_json(doc: dict[str, Any]) -> None:
    """Every error answer is JSON, also on routes whose success is text or a download (FastAPI gives an extra
    response the route's own media type): the error shape, or the model a route names for it (/readyz's 503)."""
    ref = "#/components/schemas/Error"
    for operations in doc["paths"].values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if not (status.isdigit() and int(status) >= 400) or "$ref" in response:
                    continue
                schemas = [c.get("schema", {}) for c in response.get("content", {}).values()]
                named = next((s["$ref"] for s in schemas if s.get("$ref")), ref)
                response["content"] = {"application/json": {"schema": {"$ref": named}}}


def _bodies_by_ref(doc: dict[str, Any]) -> None:
    """A route that takes its JSON body as a plain dict (`Body()`) and documents it with `json_body`: FastAPI
    merges the two; the named model alone is the body's schema."""
    for operations in doc["paths"].values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if content and "$ref" in content.get("schema", {}):
                content["schema"] = {"$ref": content["schema"]["$ref"]}


def _add_links(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    for (path, method, status), links in _LINKS.items():
        response = paths[path][method]["responses"][status]
        for name, (target, target_method, parameters, body) in links.items():
            link: dict[str, Any] = {"operationId": paths[target][target_method]["operationId"]}
            if parameters:
                link["parameters"] = parameters
            if body is not None:
                link["requestBody"] = body
            response.setdefault("links", {})[name] = link


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = configure_environment(settings or get_settings())
    app = FastAPI(title="ftserve", version="0.1.0", lifespan=_lifespan, responses=COMMON,
                  description="Fine-tune Hugging Face models over REST and serve them at once.")
    app.state.settings = settings
    app.state.inference = InferenceService(settings)
    app.state.stream_slots = StreamSlots(settings.max_streams_per_key)
    app.state.event_hub = EventHub(jobs.read_events)
    errors.install(app)
    app.openapi = partial(openapi_schema, app)  # type: ignore[method-assign]
    for module in (service, datasets, jobs, models, model_files, pushes, evaluations, predict, ui):
        app.include_router(module.router)
    # Added last, runs first: a request without a valid key is refused before its body is read.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_upload_bytes=settings.max_upload_bytes, max_import_bytes=settings.max_import_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_key_map, admins=settings.admin_names)
    return app
