"""Evaluations of a registered version on a dataset of the caller's choice, run on a worker (worker/op_evaluate.py).

Owners: a version the caller may use (its own, a shared one, any for an admin) may be evaluated; the evaluation job
belongs to the caller, whose own datasets only it may read. Listings show the caller's own evaluations (every
one for an admin). Another owner's private model, and a deleted version, are a 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import SessionDep, StoreDep, ViewerDep
from api.pagination import paginate
from api.responses import VALIDATED, Evaluation, Page, errors
from api.routes.jobs import check_dataset, submit_operation
from api.routes.models import Name, Version, _model
from api.schemas import evaluation_out, page
from core.errors import NotFound
from registry.access import Viewer
from registry.models import Job, ModelVersion
from training.spec import EvalDatasetRef, task_columns

router = APIRouter(prefix="/models", tags=["evaluations"])
EvaluationId = Annotated[str, Path(max_length=64)]
Column = Annotated[str, Field(min_length=1, max_length=256)]


class EvaluationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: EvalDatasetRef
    columns: dict[Annotated[str, Field(max_length=64)], Column] = Field(default_factory=dict, max_length=16)


def _version(session: Session, name: str, version: int, viewer: Viewer) -> ModelVersion:
    _model(session, name, viewer)  # another owner's private model: 404
    mv = session.get(ModelVersion, (name, version))
    if mv is None or mv.deleted_at is not None:
        raise NotFound(f"model '{name}' has no version {version}")
    return mv


@router.post("/{name}/versions/{version}/evaluations", status_code=202, response_model=Evaluation,
             responses={**VALIDATED, **errors(404, 409, 429)})
def create_evaluation(name: Name, version: Version, body: EvaluationBody, session: SessionDep, store: StoreDep,
                      viewer: ViewerDep) -> dict[str, Any]:
    """Queue an evaluation of `name:version` on `dataset`; its metrics are the task's, computed as in training."""
    mv = _version(session, name, version, viewer)
    columns = task_columns(mv.task, body.columns)
    sha256 = None
    if body.dataset.id is not None:
        sha256 = check_dataset(session, store, task=mv.task, dataset_id=body.dataset.id, columns=columns,
                               viewer=viewer).sha256
    job = submit_operation(session, viewer, kind="evaluate", id_prefix="eval", task=mv.task,
                           spec={"dataset": body.dataset.model_dump(mode="json"), "columns": columns,
                                 "dataset_sha256": sha256},
                           model_name=name, model_version=version, dataset_id=body.dataset.id)
    return evaluation_out(job)


def _of_version(name: str, version: int, viewer: Viewer) -> Any:
    return (Job.kind == "evaluate") & (Job.model_name == name) & (Job.model_version == version) & \
        viewer.owner_filter(Job.owner)


@router.get("/{name}/versions/{version}/evaluations", response_model=Page[Evaluation],
            responses={**VALIDATED, **errors(404)})
def list_evaluations(
    name: Name, version: Version, session: SessionDep, viewer: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """The caller's evaluations of the version (every owner's for an admin), newest first."""
    _version(session, name, version, viewer)
    rows, more = paginate(session, select(Job).where(_of_version(name, version, viewer)), Job, after=after,
                          limit=limit, visible=lambda j: _is_listed(j, name, version, viewer))
    return page([evaluation_out(j) for j in rows], more)


def _is_listed(job: Job, name: str, version: int, viewer: Viewer) -> bool:
    return (job.kind, job.model_name, job.model_version) == ("evaluate", name, version) and viewer.owns(job.owner)


@router.get("/{name}/versions/{version}/evaluations/{evaluation_id}", response_model=Evaluation,
            responses={**VALIDATED, **errors(404)})
def get_evaluation(name: Name, version: Version, evaluation_id: EvaluationId, session: SessionDep,
                   viewer: ViewerDep) -> dict[str, Any]:
    _version(session, name, version, viewer)
    job = session.get(Job, evaluation_id)
    if job is None or not _is_listed(job, name, version, viewer):
        raise NotFound(f"evaluation '{evaluation_id}' of {name}:{version} not found")
    return evaluation_out(job)
