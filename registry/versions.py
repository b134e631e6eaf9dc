"""Registered models: versions, aliases and model-ref resolution (`name`, `name:3`, `name@alias`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from core.errors import Conflict, NotFound, ValidationFailed
from core.tasks import TASKS
from registry.access import EVERYONE, Viewer
from registry.models import ModelAlias, ModelVersion, RegisteredModel

_REF = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9._-]{0,63})(?::(?P<version>\d{1,10})|@(?P<alias>[a-z0-9][a-z0-9._-]{0,63}))?$")
MAX_VERSION = 2**31 - 1  # versions are a 32-bit column: a larger number names no version


@dataclass(frozen=True)
class ParsedRef:
    name: str
    version: int | None = None
    alias: str | None = None


def parse_ref(ref: str) -> ParsedRef | None:
    m = _REF.match(ref.strip())
    if not m:
        return None
    version = m.group("version")
    if version and int(version) > MAX_VERSION:
        return None
    return ParsedRef(m.group("name"), int(version) if version else None, m.group("alias"))


def get_model(session: Session, name: str, viewer: Viewer = EVERYONE) -> RegisteredModel | None:
    """The model of that name if `viewer` may use it (own, shared, or admin), else None."""
    model = session.get(RegisteredModel, name)
    return model if model is not None and viewer.can_use(model) else None


def check_name_free(session: Session, *, name: str, task: str, viewer: Viewer) -> None:
    """A new version of `name` for a `task` job of `viewer`: the name must be free, or theirs and of that task.

    Model names are one namespace: a name another owner holds is taken, shared or not."""
    model = session.get(RegisteredModel, name)
    if model is None:
        return
    if not viewer.owns(model.owner):
        raise Conflict(f"model name '{name}' is taken by another owner; choose another model_name")
    if model.task != task:
        raise Conflict(f"model name '{name}' is already used by a {model.task} model; choose another model_name")


def ensure_model(session: Session, *, name: str, task: str, viewer: Viewer) -> RegisteredModel:
    model = session.get(RegisteredModel, name)
    if model is None:
        model = RegisteredModel(name=name, task=task, owner=viewer.owner)
        session.add(model)
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            model = session.get(RegisteredModel, name)
            if model is None:
                raise
    check_name_free(session, name=name, task=task, viewer=viewer)
    return model


def next_version(session: Session, name: str) -> int:
    """The number the next version of `name` gets. Deleted versions keep their rows, so their numbers count: an
    old `name:3` never names new weights."""
    return int(session.scalar(select(func.coalesce(func.max(ModelVersion.version), 0))
                              .where(ModelVersion.name == name)) or 0) + 1


LIVE = ModelVersion.deleted_at.is_(None)  # a WHERE clause keeping versions whose files are there


def newest_version(session: Session, name: str) -> int | None:
    """The newest version of `name` that is not deleted."""
    return session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name, LIVE))


def get_version(session: Session, name: str, version: int) -> ModelVersion | None:
    """A version that is not deleted (a deleted one keeps its row but names nothing)."""
    mv = session.get(ModelVersion, (name, version))
    return mv if mv is not None and mv.deleted_at is None else None


def _version_number(parsed: ParsedRef) -> Any:
    """The version a ref names now, as one SQL expression: the alias's, the pinned one, or production's
    falling back to the newest."""
    def alias_version(alias: str) -> Any:
        return (select(ModelAlias.version)
                .where(ModelAlias.name == parsed.name, ModelAlias.alias == alias).scalar_subquery())

    if parsed.alias is not None:
        return alias_version(parsed.alias)
    if parsed.version is not None:
        return literal(parsed.version)
    newest = aliased(ModelVersion)
    return func.coalesce(alias_version("production"),
                         select(func.max(newest.version)).where(newest.name == parsed.name,
                                                                newest.deleted_at.is_(None)).scalar_subquery())


def resolve(session: Session, ref: str, viewer: Viewer = EVERYONE) -> ModelVersion:
    """A model ref → the version it names now, among the models `viewer` may use. Unknown → NotFound naming it
    (another owner's private model is unknown too).

    One query on the path every predict request takes; the lookups that explain a miss run only on a miss.
    """
    parsed = parse_ref(ref)
    if parsed is None:
        raise NotFound(f"model '{ref}' not found (refs look like name, name:3 or name@alias)")
    found = session.scalars(
        select(ModelVersion).join(RegisteredModel, RegisteredModel.name == ModelVersion.name)
        .where(ModelVersion.name == parsed.name, ModelVersion.version == _version_number(parsed), LIVE,
               viewer.usable_models())).first()
    if found is not None:
        return found
    if get_model(session, parsed.name, viewer) is None:
        raise NotFound(f"model '{parsed.name}' not found")
    version = parsed.version
    if parsed.alias is not None:
        alias = session.get(ModelAlias, (parsed.name, parsed.alias))
        if alias is None:
            raise NotFound(f"model '{parsed.name}' has no alias '{parsed.alias}'")
        version = alias.version
    elif version is None:
        production = session.get(ModelAlias, (parsed.name, "production"))
        version = production.version if production else newest_version(session, parsed.name)
    mv = get_version(session, parsed.name, version) if version else None
    if mv is None:
        raise NotFound(f"model '{ref}' not found" + ("" if version is None else f" (no version {version})"))
    return mv


def newest_of_task(session: Session, task: str, viewer: Viewer = EVERYONE) -> ModelVersion:
    """The newest version of any model of `task` that `viewer` owns (every owner's for an admin): a request that
    names no model is answered by one of the caller's own, never by a model another owner shared."""
    mv = session.scalars(
        select(ModelVersion).join(RegisteredModel, RegisteredModel.name == ModelVersion.name)
        .where(ModelVersion.task == task, LIVE, viewer.owner_filter(RegisteredModel.owner))
        .order_by(ModelVersion.created_at.desc(), ModelVersion.version.desc()).limit(1)
    ).first()
    if mv is None:
        raise NotFound(f"no {task} model is registered yet; train one with POST /jobs (task '{task}')")
    return mv


def resolve_for_task(session: Session, ref: str | None, task: str, viewer: Viewer = EVERYONE) -> ModelVersion:
    mv = newest_of_task(session, task, viewer) if ref is None else resolve(session, ref, viewer)
    if mv.task != task:
        raise ValidationFailed(
            f"model '{mv.name}:{mv.version}' is a {mv.task} model; it is served by {TASKS[mv.task].route}"
        )
    return mv


def aliases_of(session: Session, name: str) -> dict[str, int]:
    rows = session.scalars(select(ModelAlias).where(ModelAlias.name == name)).all()
    return {a.alias: a.version for a in rows}
