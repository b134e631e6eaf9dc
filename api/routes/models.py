"""Registered models, their versions, aliases and visibility.

A caller lists and reads its own models and the shared ones; it changes (aliases, visibility) only its own.
Another owner's private model answers 404 everywhere, as an unknown name does.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api.deps import InferenceDep, SessionDep, StoreDep, ViewerDep
from api.responses import VALIDATED, Comparison, Model, ModelDetail, Page, errors
from api.responses import ModelVersion as VersionOut
from api.schemas import model_out, page, version_out
from core.errors import Forbidden, NotFound, ValidationFailed
from registry import lifecycle, versions
from registry.access import Viewer
from registry.models import ModelAlias, ModelVersion, RegisteredModel
from registry.store import MODEL_NAME, ArtifactStore

router = APIRouter(prefix="/models", tags=["models"])
log = logging.getLogger("ftserve.api")
MAX_COMPARED = 10
MAX_VERSION = 2**31 - 1  # the column is a 32-bit integer
Name = Annotated[str, Path(max_length=64)]
Version = Annotated[int, Path(ge=1, le=MAX_VERSION)]
AliasName = Annotated[str, Path(max_length=64)]


def _model(session: Any, name: str, viewer: Viewer) -> RegisteredModel:
    model = versions.get_model(session, name, viewer)
    if model is None:
        raise NotFound(f"model '{name}' not found")
    return model


def _owned(session: Any, name: str, viewer: Viewer) -> RegisteredModel:
    """A model the caller may change: its own (any, for an admin). A shared model of another owner is visible,
    so saying 404 would be untrue: that is a 403."""
    model = _model(session, name, viewer)
    if not viewer.owns(model.owner):
        raise Forbidden(f"model '{name}' is shared by another owner; only its owner can change it")
    return model


def _latest(session: Any, name: str) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.name == name, versions.LIVE)
                           .order_by(ModelVersion.version.desc()).limit(1)).first()


def _version(session: Any, name: str, version: int) -> ModelVersion:
    mv = versions.get_version(session, name, version)
    if mv is None:
        raise NotFound(f"model '{name}' has no version {version}")
    return mv


def _full(session: Any, model: RegisteredModel) -> dict[str, Any]:
    return model_out(model, latest=_latest(session, model.name), aliases=versions.aliases_of(session, model.name))


@router.get("", response_model=Page[Model], responses={**VALIDATED, **errors(404)})
def list_models(
    session: SessionDep,
    viewer: ViewerDep,
    task: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """The caller's own models and every shared one (all models for an admin), newest first."""
    stmt = select(RegisteredModel).where(viewer.usable_models())
    if task:
        stmt = stmt.where(RegisteredModel.task == task)
    if after:
        cursor = _model(session, after, viewer)
        stmt = stmt.where((RegisteredModel.created_at < cursor.created_at)
                          | ((RegisteredModel.created_at == cursor.created_at) & (RegisteredModel.name < after)))
    rows = list(session.scalars(stmt.order_by(RegisteredModel.created_at.desc(), RegisteredModel.name.desc())
                                .limit(limit + 1)).all())
    return page([_full(session, m) for m in rows[:limit]], len(rows) > limit)


@router.get("/{name}", response_model=ModelDetail, responses={**VALIDATED, **errors(404)})
def get_model(name: Name, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    model = _model(session, name, viewer)
    all_versions = session.scalars(select(ModelVersion).where(ModelVersion.name == name, versions.LIVE)
                                   .order_by(ModelVersion.version.desc())).all()
    return {**_full(session, model), "versions": [version_out(v) for v in all_versions]}


class ModelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    visibility: Literal["private", "shared"]


@router.put("/{name}", response_model=Model, responses={**VALIDATED, **errors(404)})
def put_model(name: Name, body: ModelBody, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    """`{"visibility": "shared"}` lets every key list, serve and train from the model; `"private"` takes it back
    (jobs already submitted from it keep their base)."""
    model = _owned(session, name, viewer)
    model.visibility = body.visibility
    session.flush()
    return _full(session, model)


@router.get("/{name}/versions/{version}", response_model=VersionOut, responses={**VALIDATED, **errors(404)})
def get_version(name: Name, version: Version, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    _model(session, name, viewer)
    return version_out(_version(session, name, version))


@router.get("/{name}/versions/{version}/card", response_class=PlainTextResponse,
            responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}, **VALIDATED,
                       **errors(404)})
def get_card(name: Name, version: Version, session: SessionDep, viewer: ViewerDep, store: StoreDep
             ) -> PlainTextResponse:
    """The version's model card (README.md, Hugging Face Hub format) as `text/markdown`."""
    _model(session, name, viewer)
    mv = session.get(ModelVersion, (name, version))
    if mv is None or mv.deleted_at is not None:
        raise NotFound(f"model '{name}' has no version {version}")
    try:
        text = (store.version_dir(name, version) / "README.md").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"version {name}:{version} has no model card") from None
    return PlainTextResponse(text, media_type="text/markdown")


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=MAX_VERSION)


@router.put("/{name}/aliases/{alias}", response_model=Model, responses={**VALIDATED, **errors(404)})
def put_alias(name: Name, alias: AliasName, body: AliasBody, session: SessionDep, viewer: ViewerDep
              ) -> dict[str, Any]:
    model = _owned(session, name, viewer)
    if not MODEL_NAME.match(alias):
        raise ValidationFailed(f"invalid alias '{alias}': use lowercase letters, digits, '.', '_' or '-'")
    _version(session, name, body.version)
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        session.add(ModelAlias(name=name, alias=alias, version=body.version))
    else:
        row.version = body.version
    session.flush()
    return _full(session, model)


@router.delete("/{name}/aliases/{alias}", response_model=Model, responses={**VALIDATED, **errors(404)})
def delete_alias(name: Name, alias: AliasName, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    model = _owned(session, name, viewer)
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        raise NotFound(f"model '{name}' has no alias '{alias}'")
    session.delete(row)
    session.flush()
    return _full(session, model)


def _remove_files(store: ArtifactStore, inference: Any, name: str, numbers: list[int]) -> None:
    """After the commit: the rows say deleted (and the stamp moved), so no request resolves to these any more."""
    for number in numbers:
        inference.cache.discard(f"{name}:{number}")
        path = store.version_dir(name, number)
        try:
            store.remove_tree(path)
            store.remove_tree(store.derived_dir(name, number))
        except OSError:
            # The row is deleted for good; files left behind are only disk space, and a version number is never
            # reused, so nothing can ever read them as another version.
            log.exception("could not remove the files of deleted version %s:%s", name, number)


@router.delete("/{name}/versions/{version}", status_code=204, responses={**VALIDATED, **errors(404, 409)})
def delete_version(name: Name, version: Version, session: SessionDep, store: StoreDep, viewer: ViewerDep,
                   inference: InferenceDep) -> None:
    """The files go; the row stays with `deleted_at`, so the number is never given to other weights. A 409
    while an alias points at it or something was (or is being) built on it."""
    _owned(session, name, viewer)
    lifecycle.mark_version_deleted(session, _version(session, name, version), viewer=viewer)
    session.commit()  # files go only once no one can resolve to them
    _remove_files(store, inference, name, [version])


@router.delete("/{name}", status_code=204, responses={**VALIDATED, **errors(404, 409)})
def delete_model(name: Name, session: SessionDep, store: StoreDep, viewer: ViewerDep, inference: InferenceDep,
                 force: bool = False) -> None:
    """Every version's files go and every version is marked deleted; the model's row stays, so the name stays
    its owner's and a later version gets the next number. A 409 while it has aliases, unless `force=true`
    (they are deleted with it)."""
    _owned(session, name, viewer)
    numbers = lifecycle.mark_model_deleted(session, name, viewer=viewer, force=force)
    session.commit()
    _remove_files(store, inference, name, numbers)


def _versions_param(value: str) -> list[int]:
    numbers: list[int] = []
    for item in value.split(","):
        item = item.strip()
        if not item.isdigit() or not 1 <= int(item) <= MAX_VERSION:
            raise ValidationFailed(f"versions: {item[:20]!r} is not a version number; give e.g. versions=1,2")
        if int(item) in numbers:
            raise ValidationFailed(f"versions: {item} is listed twice")
        numbers.append(int(item))
    if not 2 <= len(numbers) <= MAX_COMPARED:
        raise ValidationFailed(f"versions: give 2 to {MAX_COMPARED} versions, comma-separated (versions=1,2)")
    return numbers


@router.get("/{name}/compare", response_model=Comparison, responses={**VALIDATED, **errors(404)})
def compare_versions(name: Name, session: SessionDep, viewer: ViewerDep,
                     versions_: Annotated[str, Query(alias="versions", max_length=200)]) -> dict[str, Any]:
    """Metrics side by side, and the hyperparameters whose values differ (a missing one is null)."""
    _model(session, name, viewer)
    numbers = _versions_param(versions_)
    rows = [_version(session, name, n) for n in numbers]
    metric_keys = sorted({k for mv in rows for k in (mv.metrics or {})})
    param_keys = sorted({k for mv in rows for k in (mv.hyperparameters or {})})
    differ = {}
    for key in param_keys:
        values = {str(mv.version): (mv.hyperparameters or {}).get(key) for mv in rows}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            differ[key] = values
    return {"versions": numbers,
            "metrics": {k: {str(mv.version): (mv.metrics or {}).get(k) for mv in rows} for k in metric_keys},
            "hyperparameters_differ": differ}
