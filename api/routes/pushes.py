"""Pushes of a version to the Hugging Face Hub: queued as jobs of kind "push", run by a worker (worker/op_push.py).

Only the model's owner (or an admin) may push it or read its pushes: a push record says where the owner
publishes, under which branch, and whether it worked, which is the owner's business even for a shared model.
Another owner's private model is a 404, as everywhere; a shared one is visible, so there it is a 403.

A request's `token` is kept in the job row's `secret` only (wiped when the push ends): never in the spec, the
broker message, a log line, an event, a response or an error message.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep, ViewerDep
from api.pagination import paginate
from api.responses import VALIDATED, Page, Push, errors
from api.routes.jobs import submit_operation
from api.routes.models import Name, Version, _model
from api.schemas import iso, page
from core.errors import Forbidden, NotFound, ValidationFailed
from registry.access import Viewer
from registry.models import Job, ModelVersion, RegisteredModel
from training.spec import HubTarget, server_push_problem

router = APIRouter(prefix="/models", tags=["pushes"])
PushId = Annotated[str, Path(max_length=64)]
MAX_COMMIT_MESSAGE = 1000
MAX_TOKEN = 512
# What a push's job status reads as: a cancelled push did not finish, so it failed (its error says why).
_STATUS = {"queued": "queued", "running": "running", "cancelling": "running", "succeeded": "succeeded",
           "failed": "failed", "cancelled": "failed"}


class PushBody(HubTarget):
    commit_message: str | None = Field(default=None, min_length=1, max_length=MAX_COMMIT_MESSAGE)
    # Visible ASCII only (no spaces or control characters: it becomes an HTTP header); never repr'd or echoed.
    token: str | None = Field(default=None, min_length=1, max_length=MAX_TOKEN, pattern=r"^[\x21-\x7e]+$",
                              repr=False)


def _owners_model(session: Session, name: str, viewer: Viewer, *, action: str) -> RegisteredModel:
    model = _model(session, name, viewer)  # another owner's private model: 404
    if not viewer.owns(model.owner):
        raise Forbidden(f"model '{name}' is shared by another owner; only its owner can {action}")
    return model


def _version(session: Session, name: str, version: int, *, live: bool) -> ModelVersion:
    mv = session.get(ModelVersion, (name, version))
    if mv is None or (live and mv.deleted_at is not None):
        raise NotFound(f"model '{name}' has no version {version}")
    return mv


def push_out(job: Job) -> dict[str, Any]:
    spec, result = job.spec or {}, job.result or {}
    error = {"type": job.error_type, "message": job.error_message} if job.error_type else None
    if job.status == "cancelled":
        error = {"type": "user", "message": "the push was cancelled before it finished"}
    return {
        "id": job.id,
        "status": _STATUS.get(job.status, job.status),
        "repo_id": spec.get("repo_id"),
        "revision": spec.get("revision"),
        "private": spec.get("private"),
        "commit_message": spec.get("commit_message"),
        "url": result.get("url"),
        "commit": result.get("commit"),
        "error": error,
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
        "model": {"name": job.model_name, "version": job.model_version,
                  "ref": f"{job.model_name}:{job.model_version}"},
    }


@router.post("/{name}/versions/{version}/push", status_code=202, response_model=Push,
             responses={**VALIDATED, **errors(404, 429)})
def push_version(name: Name, version: Version, body: PushBody, session: SessionDep, viewer: ViewerDep,
                 settings: SettingsDep) -> dict[str, Any]:
    """Queue a push of the version's folder (weights, tokenizer, config, model card) to a Hub model repo."""
    _owners_model(session, name, viewer, action="push it")
    mv = _version(session, name, version, live=True)
    token = body.token
    if token is None:
        problem = server_push_problem(body.repo_id, token_configured=settings.server_hf_token is not None,
                                      namespaces=settings.push_namespaces, own_token_hint=True)
        if problem is not None:
            raise ValidationFailed(problem)
    elif body.commit_message is not None and token in body.commit_message:
        raise ValidationFailed("commit_message contains the token: a commit message is public on the Hub")
    spec = {"repo_id": body.repo_id, "private": body.private, "revision": body.revision,
            "commit_message": body.commit_message or f"Upload {name}:{version} from ftserve",
            # Which token the worker uses: a request's push never falls back to the server's.
            "auth": "request" if token is not None else "server"}
    job = submit_operation(session, viewer, kind="push", id_prefix="push", task=mv.task, spec=spec,
                           model_name=name, model_version=version, secret=token)
    return push_out(job)


def _pushes_of(name: str, version: int) -> Any:
    return select(Job).where(Job.kind == "push", Job.model_name == name, Job.model_version == version)


def _is_push_of(job: Job, name: str, version: int) -> bool:
    return job.kind == "push" and job.model_name == name and job.model_version == version


@router.get("/{name}/versions/{version}/pushes", response_model=Page[Push], responses={**VALIDATED, **errors(404)})
def list_pushes(
    name: Name,
    version: Version,
    session: SessionDep,
    viewer: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """The version's pushes, newest first (a deleted version keeps its history)."""
    _owners_model(session, name, viewer, action="see its pushes")
    _version(session, name, version, live=False)
    rows, more = paginate(session, _pushes_of(name, version), Job, after=after, limit=limit,
                          visible=lambda j: _is_push_of(j, name, version))
    return page([push_out(j) for j in rows], more)


@router.get("/{name}/versions/{version}/pushes/{push_id}", response_model=Push,
            responses={**VALIDATED, **errors(404)})
def get_push(name: Name, version: Version, push_id: PushId, session: SessionDep, viewer: ViewerDep
             ) -> dict[str, Any]:
    _owners_model(session, name, viewer, action="see its pushes")
    _version(session, name, version, live=False)
    job = session.get(Job, push_id)
    if job is None or not _is_push_of(job, name, version):
        raise NotFound(f"push '{push_id}' not found for {name}:{version}")
    return push_out(job)
