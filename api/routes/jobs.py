"""Jobs: submit (validated spec, row first, then the message), list, get, cancel, events (JSON or SSE)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from datetime import timedelta
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import OwnerDep, SessionDep, StoreDep
from api.pagination import paginate
from api.routes.datasets import get_dataset
from api.schemas import job_out, page
from core.errors import Conflict, ValidationFailed
from core.ids import new_id
from registry import jobs as jobrepo
from registry import versions
from registry.datafiles import Limits, iter_rows
from registry.datasets import cached_check, check_key, profile_of
from registry.db import session_scope
from registry.models import Job
from registry.store import ArtifactStore
from training.spec import JobRequest, JobSpec, build_spec
from training.tasks import implemented
from worker.dispatch import send_job

router = APIRouter(prefix="/jobs", tags=["jobs"])
IDEMPOTENCY_TTL = timedelta(hours=24)
log = logging.getLogger("ftserve.api")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?$")
STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def _out(session: Session, job: Job) -> dict[str, Any]:
    return job_out(job, queue_position=jobrepo.queue_position(session, job))


def _parse_request(body: dict[str, Any]) -> JobRequest:
    try:
        return JobRequest.model_validate(body)
    except ValidationError as exc:
        from api.errors import _describe

        errs = exc.errors()
        raise ValidationFailed("; ".join(_describe(e) for e in errs[:5]),
                               details=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in errs]) from exc


def _resolve_base_model(session: Session, spec: JobSpec) -> str:
    parsed = versions.parse_ref(spec.base_model)
    explicit = ":" in spec.base_model or "@" in spec.base_model
    if parsed is not None and (explicit or versions.get_model(session, parsed.name) is not None):
        mv = versions.resolve(session, spec.base_model)  # NotFound names the ref
        if mv.task != spec.task:
            raise ValidationFailed(
                f"base_model '{spec.base_model}' is a {mv.task} model; a {spec.task} job needs a {spec.task} "
                "model or a hub id")
        return f"model:{mv.name}:{mv.version}"
    if not _HUB_ID.match(spec.base_model):
        raise ValidationFailed(
            f"base_model '{spec.base_model}' is neither a registered model (name, name:3, name@alias) nor a "
            "Hugging Face hub id (org/name)")
    return f"hub:{spec.base_model}"


def _check_data(session: Session, store: ArtifactStore, spec: JobSpec) -> None:
    """Uploaded datasets are checked now, so a bad column or label set is a 422, not a failed job.

    Columns, types and labels come from the profile stored at upload; a check that needs the rows themselves
    (QA answer offsets) reads them once per dataset and column mapping, and its outcome is kept.
    """
    from training.data import check_columns
    from training.runner import map_rows
    from training.tasks import get_task

    task = get_task(spec.task)
    limits = Limits.from_settings()
    refs = [("dataset", spec.dataset)]
    if spec.validation.id is not None:
        refs.append(("validation", spec.validation))
    for _, ref in refs:
        if ref.id is None:
            continue
        ds = get_dataset(session, ref.id)
        what = f"dataset {ds.id} ({ds.name})"
        path = store.dataset_file(ds.id, ds.file_name)
        profile = profile_of(ds, path=path, limits=limits)
        check_columns(profile.columns, spec.columns, what=what)
        task.check_profile(profile, spec.columns, what=what)
        if task.needs_rows:
            rows = partial(iter_rows, path, ds.format, limits=limits, label=ds.file_name)
            cached_check(ds, key=check_key(spec.task, spec.columns),
                         run=lambda rows=rows, what=what: task.check_rows(map_rows(spec, rows()), uploaded=True,
                                                                          what=what))


def _create(session: Session, store: ArtifactStore, owner: str, body: dict[str, Any],
            idempotency_key: str | None) -> tuple[Job, bool]:
    request_hash = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    if idempotency_key is not None:
        first = session.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == idempotency_key)
                                ).first()
        if first is not None and jobrepo.as_utc(first.created_at) < jobrepo.utcnow() - IDEMPOTENCY_TTL:
            first.idempotency_key = None  # keys are kept 24 h; after that the key starts a new job
            session.flush()
            first = None
        if first is not None:
            if first.request_hash != request_hash:
                raise Conflict("Idempotency-Key was already used with a different request body")
            return first, False
    request = _parse_request(body)
    job_id = new_id("job")
    spec = build_spec(request, default_model_name=job_id)
    existing = versions.get_model(session, spec.model_name)
    if existing is not None and existing.task != spec.task:
        raise Conflict(f"model name '{spec.model_name}' is already used by a {existing.task} model; "
                       "choose another model_name")
    if spec.task not in implemented():
        raise ValidationFailed(f"task '{spec.task}' is not available yet; available: {', '.join(implemented())}")
    resolved = _resolve_base_model(session, spec)
    _check_data(session, store, spec)
    job = Job(id=job_id, owner=owner, task=spec.task, spec=json.loads(spec.model_dump_json()),
              model_name=spec.model_name, base_model_resolved=resolved, dataset_id=spec.dataset.id,
              validation_dataset_id=spec.validation.id, idempotency_key=idempotency_key,
              request_hash=request_hash)
    jobrepo.create_job(session, job)
    return job, True


@router.post("", status_code=201)
def submit_job(
    session: SessionDep,
    store: StoreDep,
    owner: OwnerDep,
    body: Annotated[dict[str, Any], Body()],
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Any:
    try:
        job, created = _create(session, store, owner, body, idempotency_key)
        session.commit()  # the row is the truth: written before the message is sent
    except IntegrityError:
        session.rollback()
        job = session.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == idempotency_key)
                              ).first()
        if job is None:
            raise
        created = False
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
@router.get("")
def list_jobs(
    status: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    stmt = select(Job)
    if status is not None:
        if status not in STATUSES:
            raise ValidationFailed(f"unknown status '{status}'; allowed: {', '.join(STATUSES)}")
        stmt = stmt.where(Job.status == status)
    with session_scope() as session:
        rows, more = paginate(session, stmt, Job, after=after, limit=limit)
        return page([_out(session, j) for j in rows], more)


@router.get("/{job_id}")
def get_job(job_id: str) -> dict[str, Any]:
    with session_scope() as session:
        return _out(session, jobrepo.get_job(session, job_id))


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, session: SessionDep) -> dict[str, Any]:
    job = jobrepo.request_cancel(session, job_id)
    return _out(session, job)


def _event_out(ev: Any) -> dict[str, Any]:
    from api.schemas import iso

    return {"id": ev.id, "type": ev.type, "created_at": iso(ev.created_at), "message": ev.message,
            "data": ev.data}


def _read_events(job_id: str, after: int, limit: int) -> tuple[list[dict[str, Any]], bool, str]:
    # Status first: a terminal status read here means its final event is already committed.
    with session_scope() as s:
        status = jobrepo.get_job(s, job_id).status
    with session_scope() as s:
        events, more = jobrepo.list_events(s, job_id, after=after, limit=limit)
        return [_event_out(e) for e in events], more, status


@router.get("/{job_id}/events")
async def job_events(
    job_id: str,
    request: Request,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Any:
    data, more, _ = await anyio.to_thread.run_sync(_read_events, job_id, after, limit)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return {"data": data, "has_more": more}
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after

    async def stream() -> Any:
        cursor = start
        while True:
            events, more, status = await anyio.to_thread.run_sync(_read_events, job_id, cursor, 500)
            for ev in events:
                cursor = ev["id"]
                yield f"id: {ev['id']}\nevent: {ev['type']}\ndata: {json.dumps(ev)}\n\n"
            if not more and status in jobrepo.TERMINAL:
                return
            if await request.is_disconnected():
                return
            if not events:
                await asyncio.sleep(0.5)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

