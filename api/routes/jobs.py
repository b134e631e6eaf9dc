"""Jobs: submit (validated spec, row first, then the message), list, get, cancel, events (JSON or SSE)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import timedelta
from functools import partial
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal, TypeVar

import anyio
from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep, StoreDep, ViewerDep
from api.pagination import paginate
from api.responses import VALIDATED, Page, errors, json_body
from api.responses import Job as JobOut
from api.responses import JobEvent as JobEventOut
from api.routes.datasets import get_dataset
from api.schemas import job_out, page
from api.streams import EventHub, SlotStream, StreamSlots
from core.errors import Conflict, RateLimited, ValidationFailed
from core.ids import new_id
from core.settings import get_settings
from registry import jobs as jobrepo
from registry import versions
from registry.access import EVERYONE, Viewer
from registry.datafiles import Limits, iter_rows
from registry.datasets import cached_check, check_key, profile_of
from registry.db import session_scope
from registry.models import Dataset, Job, ModelVersion, RegisteredModel
from registry.store import ArtifactStore
from training.spec import JobRequest, JobSpec, LoraMethod, build_spec, hub_repo_id, server_push_problem
from training.tasks import implemented
from worker.dispatch import send_job

router = APIRouter(prefix="/jobs", tags=["jobs"])
IDEMPOTENCY_TTL = timedelta(hours=24)
B = TypeVar("B", bound=BaseModel)
log = logging.getLogger("ftserve.api")
STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
MAX_EVENT_ID = 2**31 - 1  # the column is a 32-bit integer: a bigger cursor is a 422, not a database error
JobId = Annotated[str, Path(max_length=64)]


def polled(body: dict[str, Any]) -> JSONResponse:
    """The answer of a route clients poll, sent as it is: its dicts hold JSON values only, and FastAPI's
    validation and encoding against the response model cost more than the query (bench/lifecycle_bench.py). The
    model still documents it, and tests/e2e/test_openapi_conformance.py checks the wire format against it."""
    return JSONResponse(body)


def _out(session: Session, job: Job) -> dict[str, Any]:
    return job_out(job, queue_position=jobrepo.queue_position(session, job))


def parse_body(cls: type[B], body: Any) -> B:
    """A JSON body read by hand (to hash it, or to pick the route's form) validated as `cls`; 422 like FastAPI's."""
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        from api.errors import _describe

        errs = exc.errors()
        raise ValidationFailed("; ".join(_describe(e) for e in errs[:5]),
                               details=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in errs]) from exc


def _resolve_base_model(session: Session, spec: JobSpec, viewer: Viewer) -> str:
    """A registered model the caller may use (`model:name:3`), else a hub id (`hub:org/name`).

    A bare name that is registered names that model, even when it is another owner's private one: then it is a
    404, never a silent fall back to a hub model of the same spelling."""
    parsed = versions.parse_ref(spec.base_model)
    explicit = ":" in spec.base_model or "@" in spec.base_model
    if parsed is not None and (explicit or session.get(RegisteredModel, parsed.name) is not None):
        mv = versions.resolve(session, spec.base_model, viewer)  # NotFound names the ref
        if mv.task != spec.task:
            raise ValidationFailed(
                f"base_model '{spec.base_model}' is a {mv.task} model; a {spec.task} job needs a {spec.task} "
                "model or a hub id")
        return f"model:{mv.name}:{mv.version}"
    try:
        hub_repo_id(spec.base_model, what="model")
    except ValueError as exc:
        raise ValidationFailed(
            f"base_model {spec.base_model[:100]!r} is neither a registered model (name, name:3, name@alias) nor "
            f"a Hugging Face hub id: {exc}") from exc
    return f"hub:{spec.base_model}"


def _cached_snapshot(repo_id: str) -> FsPath | None:
    """The folder of the cached snapshot `from_pretrained(repo_id)` loads offline, if this server has one."""
    from huggingface_hub import try_to_load_from_cache

    # The cache this process's libraries load from (HF_HOME is set at start; read now, not at import).
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", get_settings().hf_home), "hub")
    found = try_to_load_from_cache(repo_id=repo_id, filename="config.json", cache_dir=cache)
    return FsPath(found).parent if isinstance(found, str) else None


def _check_method(session: Session, store: ArtifactStore, spec: JobSpec, resolved: str) -> None:
    """A base that is a LoRA adapter is refused (an adapter trains on a full model); a LoRA job's target_modules
    are checked against the base's layers when its weights are on this server (else the worker checks them)."""
    from training.lora import check_targets_at_submit

    kind, _, rest = resolved.partition(":")
    folder: FsPath | None = None
    if kind == "model":
        name, _, number = rest.rpartition(":")
        mv = session.get(ModelVersion, (name, int(number)))
        if mv is not None and mv.method == "lora":
            base = str(((mv.adapter or {}).get("base") or {}).get("resolved") or "its base").removeprefix("hub:")
            raise ValidationFailed(
                f"base_model '{spec.base_model}' is a LoRA adapter version (it loads on {base}); a job cannot train "
                f"from an adapter: use its base_model '{base.removeprefix('model:')}' (with method lora for another "
                "adapter)")
        folder = store.version_dir(name, int(number))
    if isinstance(spec.method, LoraMethod):
        if folder is None:
            folder = _cached_snapshot(rest)
        check_targets_at_submit(spec.method, folder=folder, model=spec.base_model)


def _check_not_a_cached_hub_model(session: Session, name: str) -> None:
    """A bare registered name wins over a hub id spelled the same, for every key that may not use it a 404: a new
    name that is a hub model this server has cached (`gpt2`, `t5-small`) would take that base model from
    everyone."""
    if session.get(RegisteredModel, name) is not None:
        return  # the name is registered already: this job adds a version
    if _cached_snapshot(name) is not None:
        raise Conflict(f"model_name '{name}' is a Hugging Face model in this server's cache; a registered model of "
                       "that name would hide it as a base_model from every other key: choose another model_name")


def _check_data(session: Session, store: ArtifactStore, spec: JobSpec, viewer: Viewer) -> None:
    """Uploaded datasets are checked now, so a bad column or label set is a 422, not a failed job.

    Columns, types and labels come from the profile stored at upload; a check that needs the rows themselves
    (QA answer offsets) reads them once per dataset and column mapping, and its outcome is kept.
    """
    for ref in (spec.dataset, spec.validation, spec.promote.dataset if spec.promote else None):
        if ref is not None and ref.id is not None:
            check_dataset(session, store, task=spec.task, dataset_id=ref.id, columns=spec.columns, viewer=viewer)


def check_dataset(session: Session, store: ArtifactStore, *, task: str, dataset_id: str, columns: dict[str, str],
                  viewer: Viewer) -> Dataset:
    """One uploaded dataset of the caller's (another owner's is a 404) against a task's column mapping."""
    from training.data import check_columns, map_columns
    from training.tasks import get_task

    impl = get_task(task)
    limits = Limits.from_settings()
    ds = get_dataset(session, dataset_id, viewer)
    what = f"dataset {ds.id} ({ds.name})"
    path = store.dataset_file(ds.id, ds.file_name)
    profile = profile_of(ds, path=path, limits=limits)
    check_columns(profile.columns, columns, what=what)
    impl.check_profile(profile, columns, what=what)
    if impl.needs_rows:
        rows = partial(iter_rows, path, ds.format, limits=limits, label=ds.file_name)
        cached_check(ds, key=check_key(task, columns),
                     run=lambda: impl.check_rows(map_columns(columns, rows()), uploaded=True, what=what))
    return ds


def _check_job_push(spec: JobSpec) -> None:
    """A job's `push` uses the server's Hub token: it must have one, and the repo must be in its namespaces."""
    assert spec.push is not None
    settings = get_settings()
    problem = server_push_problem(spec.push.repo_id, token_configured=settings.server_hf_token is not None,
                                  namespaces=settings.push_namespaces, own_token_hint=False)
    if problem is not None:
        raise ValidationFailed(f"push: {problem}")


def _request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _first_with_key(session: Session, owner: str, key: str, request_hash: str) -> Job | None:
    """The job an earlier request with this Idempotency-Key created (within 24 h), checked against this body."""
    first = session.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).first()
    if first is not None and jobrepo.as_utc(first.created_at) < jobrepo.utcnow() - IDEMPOTENCY_TTL:
        # Keys are kept 24 h; after that the key starts a new job. Freed in a transaction of its own: a write
        # here would hold SQLite's write lock through the data checks that follow (and block every heartbeat).
        with session_scope() as own:
            own.execute(update(Job).where(Job.id == first.id).values(idempotency_key=None))
        return None
    if first is not None and first.request_hash != request_hash:
        raise Conflict("Idempotency-Key was already used with a different request body")
    return first


def _create(session: Session, store: ArtifactStore, viewer: Viewer, body: dict[str, Any], *,
            idempotency_key: str | None, request_hash: str, max_active: int) -> tuple[Job, bool]:
    owner = viewer.owner
    if idempotency_key is not None:
        first = _first_with_key(session, owner, idempotency_key, request_hash)
        if first is not None:
            return first, False
    request = parse_body(JobRequest, body)
    job_id = new_id("job")
    spec = build_spec(request, default_model_name=job_id)
    versions.check_name_free(session, name=spec.model_name, task=spec.task, viewer=viewer)
    _check_not_a_cached_hub_model(session, spec.model_name)
    if spec.task not in implemented():
        raise ValidationFailed(f"task '{spec.task}' is not available yet; available: {', '.join(implemented())}")
    resolved = _resolve_base_model(session, spec, viewer)
    _check_method(session, store, spec, resolved)
    _check_data(session, store, spec, viewer)
    if spec.push is not None:
        _check_job_push(spec)
    job = Job(id=job_id, owner=owner, task=spec.task, spec=json.loads(spec.model_dump_json()),
              model_name=spec.model_name, base_model_resolved=resolved, dataset_id=spec.dataset.id,
              validation_dataset_id=spec.validation.id, idempotency_key=idempotency_key,
              request_hash=request_hash)
    _insert_capped(session, job, max_active=max_active)
    return job, True


def _insert_capped(session: Session, job: Job, *, max_active: int) -> None:
    """Insert a queued job, within its owner's cap of active jobs (429 beyond it).

    Per owner, so that one key cannot fill the queue that every key's jobs wait in. Counted after the insert,
    under the owner's lock: concurrent submissions cannot all pass a count taken before any of them wrote."""
    jobrepo.lock_owner(session, job.owner)
    jobrepo.create_job(session, job)
    active = jobrepo.active_jobs_of(session, job.owner)
    if active > max_active:
        raise RateLimited(f"{active - 1} of your jobs are queued or running (the limit is {max_active} per owner, "
                          "FTSERVE_MAX_ACTIVE_JOBS_PER_OWNER); wait for one to finish or cancel one",
                          retry_after=30)


def submit_operation(session: Session, viewer: Viewer, *, kind: str, id_prefix: str, task: str,
                     spec: dict[str, Any], model_name: str, model_version: int | None = None,
                     secret: str | None = None, dataset_id: str | None = None) -> Job:
    """Queue a job of another kind than training (import, push, evaluate: worker/operations.py), committed
    before its message is sent like any job. `spec` is stored and shown; a `secret` (a Hub token) is not."""
    job = Job(id=new_id(id_prefix), owner=viewer.owner, kind=kind, task=task, spec=spec, model_name=model_name,
              model_version=model_version, secret=secret, dataset_id=dataset_id)
    _insert_capped(session, job, max_active=get_settings().max_active_jobs_per_owner)
    session.commit()
    try:
        send_job(job.id)
    except Exception:
        log.exception("could not enqueue %s now; the reconciler will re-send it", job.id)
    return job


@router.post("", status_code=201, response_model=JobOut, openapi_extra=json_body("JobRequest"), responses={
    200: {"model": JobOut, "description": "A retried request (same `Idempotency-Key` and body): the first job."},
    **VALIDATED, **errors(404, 409, 429)})
def submit_job(
    session: SessionDep,
    store: StoreDep,
    viewer: ViewerDep,
    settings: SettingsDep,
    body: Annotated[dict[str, Any], Body()],
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Any:
    request_hash = _request_hash(body)
    try:
        job, created = _create(session, store, viewer, body, idempotency_key=idempotency_key,
                               request_hash=request_hash, max_active=settings.max_active_jobs_per_owner)
        session.commit()  # the row is the truth: written before the message is sent
    except IntegrityError:
        # A concurrent request with the same key committed first: that one is the job, if the bodies agree.
        session.rollback()
        if idempotency_key is None:
            raise
        first = _first_with_key(session, viewer.owner, idempotency_key, request_hash)
        if first is None:
            raise
        job, created = first, False
    if not created:
        return JSONResponse(_out(session, job), status_code=200)
    try:
        send_job(job.id)
    except Exception:
        # The job stays queued in the database; the reconciler re-sends it when the broker is back.
        log.exception("could not enqueue %s now; the reconciler will re-send it", job.id)
    return _out(session, job)


# The polled read routes open their session in the handler rather than through SessionDep: a dependency with
# `yield` costs two extra thread hops per request (see bench/lifecycle_bench.py).
@router.get("", response_model=Page[JobOut], responses={**VALIDATED, **errors(404)})
def list_jobs(
    viewer: ViewerDep,
    status: Annotated[str | None, Query(max_length=16)] = None,
    kind: Annotated[Literal["train", "import", "push", "evaluate"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Any:
    """The caller's jobs of every kind (training runs, imports, pushes, evaluations), newest first."""
    stmt = select(Job).where(viewer.owner_filter(Job.owner))
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if status is not None:
        if status not in STATUSES:
            raise ValidationFailed(f"unknown status '{status}'; allowed: {', '.join(STATUSES)}")
        stmt = stmt.where(Job.status == status)
    with session_scope() as session:
        rows, more = paginate(session, stmt, Job, after=after, limit=limit, visible=lambda j: viewer.owns(j.owner))
        return polled(page([_out(session, j) for j in rows], more))


@router.get("/{job_id}", response_model=JobOut, responses={**VALIDATED, **errors(404)})
def get_job(job_id: JobId, viewer: ViewerDep) -> Any:
    with session_scope() as session:
        return polled(_out(session, jobrepo.get_job(session, job_id, viewer=viewer)))


@router.post("/{job_id}/cancel", response_model=JobOut, responses={**VALIDATED, **errors(404, 409)})
def cancel_job(job_id: JobId, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    job = jobrepo.request_cancel(session, job_id, viewer=viewer)
    return _out(session, job)


def _event_out(ev: Any) -> dict[str, Any]:
    from api.schemas import iso

    return {"id": ev.id, "type": ev.type, "created_at": iso(ev.created_at), "message": ev.message,
            "data": ev.data}


def read_events(job_id: str, after: int, limit: int, viewer: Viewer = EVERYONE
                ) -> tuple[list[dict[str, Any]], bool, str]:
    # Status first: a terminal status read here means its final event is already committed.
    with session_scope() as s:
        status = jobrepo.get_job(s, job_id, viewer=viewer).status
    with session_scope() as s:
        events, more = jobrepo.list_events(s, job_id, after=after, limit=limit)
        return [_event_out(e) for e in events], more, status


def _event_cursor(last_event_id: str | None, after: int) -> int:
    if last_event_id is None or not last_event_id.strip():
        return after
    value = last_event_id.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 10 and int(value) <= MAX_EVENT_ID):
        raise ValidationFailed(f"Last-Event-ID must be an event id (an integer up to {MAX_EVENT_ID}), "
                               f"not {value[:20]!r}")
    return int(value)


@router.get("/{job_id}/events", response_model=Page[JobEventOut], responses={
    200: {"description": "JSON pages, or with `Accept: text/event-stream` a live stream of `id: <id>`, "
                         "`event: <type>`, `data: <the event as JSON>` that ends after the terminal status event.",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **VALIDATED, **errors(404, 429)})
async def job_events(
    job_id: JobId,
    request: Request,
    viewer: ViewerDep,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> Any:
    if "text/event-stream" not in request.headers.get("accept", ""):
        data, more, _ = await anyio.to_thread.run_sync(read_events, job_id, after, limit, viewer)
        return polled({"data": data, "has_more": more})
    start = _event_cursor(last_event_id, after)
    # Another owner's job is a plain 404 before the stream starts; the stream's poller then reads for everyone.
    await anyio.to_thread.run_sync(read_events, job_id, start, 1, viewer)
    slots: StreamSlots = request.app.state.stream_slots
    slots.acquire(viewer.owner)
    hub: EventHub = request.app.state.event_hub
    return SlotStream(hub.follow(job_id, start), slots=slots, key=viewer.owner, media_type="text/event-stream",
                      headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
