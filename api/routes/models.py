"""Registered models, their versions and aliases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api.deps import SessionDep
from api.schemas import model_out, page, version_out
from core.errors import NotFound, ValidationFailed
from registry import versions
from registry.models import ModelAlias, ModelVersion, RegisteredModel
from registry.store import MODEL_NAME

router = APIRouter(prefix="/models", tags=["models"])


def _model(session: Any, name: str) -> RegisteredModel:
    model = versions.get_model(session, name)
    if model is None:
        raise NotFound(f"model '{name}' not found")
    return model


def _latest(session: Any, name: str) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.name == name)
                           .order_by(ModelVersion.version.desc()).limit(1)).first()


def _full(session: Any, model: RegisteredModel) -> dict[str, Any]:
    return model_out(model, latest=_latest(session, model.name), aliases=versions.aliases_of(session, model.name))


@router.get("")
def list_models(
    session: SessionDep,
    task: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
    after: str | None = None,
) -> dict[str, Any]:
    stmt = select(RegisteredModel)
    if task:
        stmt = stmt.where(RegisteredModel.task == task)
    if after:
        cursor = _model(session, after)
        stmt = stmt.where((RegisteredModel.created_at < cursor.created_at)
                          | ((RegisteredModel.created_at == cursor.created_at) & (RegisteredModel.name < after)))
    rows = list(session.scalars(stmt.order_by(RegisteredModel.created_at.desc(), RegisteredModel.name.desc())
                                .limit(limit + 1)).all())
    return page([_full(session, m) for m in rows[:limit]], len(rows) > limit)


@router.get("/{name}")
def get_model(name: str, session: SessionDep) -> dict[str, Any]:
    model = _model(session, name)
    all_versions = session.scalars(select(ModelVersion).where(ModelVersion.name == name)
                                   .order_by(ModelVersion.version.desc())).all()
    return {**_full(session, model), "versions": [version_out(v) for v in all_versions]}


@router.get("/{name}/versions/{version}")
def get_version(name: str, version: int, session: SessionDep) -> dict[str, Any]:
    _model(session, name)
    mv = session.get(ModelVersion, (name, version))
    if mv is None:
        raise NotFound(f"model '{name}' has no version {version}")
    return version_out(mv)


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


@router.put("/{name}/aliases/{alias}")
def put_alias(name: str, alias: str, body: AliasBody, session: SessionDep) -> dict[str, Any]:
    _model(session, name)
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
    return _full(session, _model(session, name))


@router.delete("/{name}/aliases/{alias}")
def delete_alias(name: str, alias: str, session: SessionDep) -> dict[str, Any]:
    _model(session, name)
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        raise NotFound(f"model '{name}' has no alias '{alias}'")
    session.delete(row)
    session.flush()
    return _full(session, _model(session, name))
