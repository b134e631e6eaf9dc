"""Registered models, their versions, aliases and visibility.

A caller lists and reads its own models and the shared ones; it changes (aliases, visibility) only its own.
Another owner's private model answers 404 everywhere, as an unknown name does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api.deps import SessionDep, StoreDep, ViewerDep
from api.schemas import model_out, page, version_out
from core.errors import Forbidden, NotFound, ValidationFailed
from registry import versions
from registry.access import Viewer
from registry.models import ModelAlias, ModelVersion, RegisteredModel
from registry.store import MODEL_NAME

router = APIRouter(prefix="/models", tags=["models"])
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
    return session.scalars(select(ModelVersion).where(ModelVersion.name == name)
                           .order_by(ModelVersion.version.desc()).limit(1)).first()


def _full(session: Any, model: RegisteredModel) -> dict[str, Any]:
    return model_out(model, latest=_latest(session, model.name), aliases=versions.aliases_of(session, model.name))


@router.get("")
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


@router.get("/{name}")
def get_model(name: Name, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    model = _model(session, name, viewer)
    all_versions = session.scalars(select(ModelVersion).where(ModelVersion.name == name)
                                   .order_by(ModelVersion.version.desc())).all()
    return {**_full(session, model), "versions": [version_out(v) for v in all_versions]}


class ModelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    visibility: Literal["private", "shared"]


@router.put("/{name}")
def put_model(name: Name, body: ModelBody, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    """`{"visibility": "shared"}` lets every key list, serve and train from the model; `"private"` takes it back
    (jobs already submitted from it keep their base)."""
    model = _owned(session, name, viewer)
    model.visibility = body.visibility
    session.flush()
    return _full(session, model)


@router.get("/{name}/versions/{version}")
def get_version(name: Name, version: Version, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    _model(session, name, viewer)
    mv = session.get(ModelVersion, (name, version))
    if mv is None:
        raise NotFound(f"model '{name}' has no version {version}")
    return version_out(mv)


@router.get("/{name}/versions/{version}/card", response_class=PlainTextResponse,
            responses={200: {"content": {"text/markdown": {}}}})
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


@router.put("/{name}/aliases/{alias}")
def put_alias(name: Name, alias: AliasName, body: AliasBody, session: SessionDep, viewer: ViewerDep
              ) -> dict[str, Any]:
    model = _owned(session, name, viewer)
    if not MODEL_NAME.match(alias):
        raise ValidationFailed(f"invalid alias '{alias}': use lowercase letters, digits, '.', '_' or '-'")
    if session.get(ModelVersion, (name, body.version)) is None:
        raise NotFound(f"model '{name}' has no version {body.version}")
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        session.add(ModelAlias(name=name, alias=alias, version=body.version))
    else:
        row.version = body.version
    session.flush()
    return _full(session, model)


@router.delete("/{name}/aliases/{alias}")
def delete_alias(name: Name, alias: AliasName, session: SessionDep, viewer: ViewerDep) -> dict[str, Any]:
    model = _owned(session, name, viewer)
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        raise NotFound(f"model '{name}' has no alias '{alias}'")
    session.delete(row)
    session.flush()
    return _full(session, model)
