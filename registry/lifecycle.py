"""Deleting versions and models: the files go, the rows stay (`deleted_at`), so a number is never reused.

A version cannot go while something depends on it: an alias that points at it, a version that was trained from
it (`base_model_resolved` `model:name:3`; a LoRA adapter trained on it needs its weights to load at all), or a
queued or running job that trains from it or works on it (push, evaluate). Dependents of another owner are
counted, never named.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.errors import Conflict
from registry import jobs as jobrepo
from registry.access import Viewer
from registry.models import Job, ModelAlias, ModelVersion, utcnow
from registry.versions import LIVE

MAX_NAMED = 5  # dependents named in a 409; the rest are counted


def _ref(name: str, version: int) -> str:
    return f"model:{name}:{version}"


def dependents(session: Session, name: str, numbers: Collection[int], *, viewer: Viewer,
               whole_model: bool = False) -> list[str]:
    """What keeps versions `numbers` of `name` from being deleted, one phrase each. For the `whole_model`, its
    aliases and its own versions go with it, so they are left out."""
    numbers = sorted(set(numbers))
    if not numbers:
        return []
    refs = [_ref(name, v) for v in numbers]
    found: list[str] = []
    if not whole_model:
        for alias in session.scalars(select(ModelAlias).where(ModelAlias.name == name,
                                                              ModelAlias.version.in_(numbers))
                                     .order_by(ModelAlias.alias)):
            found.append(f"alias '{alias.alias}' points at version {alias.version}")
    stmt = select(ModelVersion).where(ModelVersion.base_model_resolved.in_(refs), LIVE)
    if whole_model:
        stmt = stmt.where(ModelVersion.name != name)
    others = 0
    for mv in session.scalars(stmt.order_by(ModelVersion.name, ModelVersion.version)):
        if viewer.owns(mv.owner):
            base = mv.base_model_resolved.removeprefix("model:")
            found.append(f"version {mv.name}:{mv.version} is a LoRA adapter that loads on {base}"
                         if mv.method == "lora" else f"version {mv.name}:{mv.version} was trained from {base}")
        else:
            others += 1
    if others:
        found.append(f"{others} version(s) of other owners' models were trained from it")
    jobs = session.scalars(select(Job).where(Job.status.in_(jobrepo.ACTIVE), or_(
        Job.base_model_resolved.in_(refs),
        (Job.kind != "train") & (Job.model_name == name) & Job.model_version.in_(numbers),
    )).order_by(Job.created_at)).all()
    theirs = sum(1 for j in jobs if not viewer.owns(j.owner))
    found += [f"job '{j.id}' ({j.status}) uses it" for j in jobs if viewer.owns(j.owner)]
    if theirs:
        found.append(f"{theirs} queued or running job(s) of other owners use it")
    return found


def _refuse(what: str, blockers: list[str], hint: str) -> None:
    if blockers:
        listed = "; ".join(blockers[:MAX_NAMED]) + (f"; and {len(blockers) - MAX_NAMED} more"
                                                    if len(blockers) > MAX_NAMED else "")
        raise Conflict(f"{what} is in use: {listed}. {hint}")


def mark_version_deleted(session: Session, mv: ModelVersion, *, viewer: Viewer) -> datetime:
    """Check nothing depends on `mv` and mark it deleted (in the caller's transaction; files go after commit)."""
    _refuse(f"model '{mv.name}' version {mv.version}",
            dependents(session, mv.name, [mv.version], viewer=viewer),
            "Move or delete the alias, and wait for (or cancel) the jobs, first")
    mv.deleted_at = utcnow()
    session.flush()
    return mv.deleted_at


def mark_model_deleted(session: Session, name: str, *, viewer: Viewer, force: bool) -> list[int]:
    """Mark every live version of `name` deleted; with `force` its aliases go too (else they are a 409).
    Returns the versions marked. The model's row stays: the name stays its owner's and numbers go on."""
    live = list(session.scalars(select(ModelVersion).where(ModelVersion.name == name, LIVE)
                                .order_by(ModelVersion.version)))
    aliases = list(session.scalars(select(ModelAlias).where(ModelAlias.name == name).order_by(ModelAlias.alias)))
    if aliases and not force:
        raise Conflict(f"model '{name}' has aliases ({', '.join(a.alias for a in aliases)}); delete them first or "
                       "pass ?force=true to delete them with the model")
    _refuse(f"model '{name}'", dependents(session, name, [mv.version for mv in live], viewer=viewer,
                                          whole_model=True),
            "Delete what was built on it, and wait for (or cancel) the jobs, first")
    for alias in aliases:
        session.delete(alias)
    now = utcnow()
    for mv in live:
        mv.deleted_at = now
    session.flush()
    return [mv.version for mv in live]
