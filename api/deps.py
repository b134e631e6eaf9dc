"""Shared request dependencies as Annotated aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from core.settings import Settings, get_settings
from inference.service import InferenceService
from registry.access import Viewer
from registry.db import session_scope
from registry.store import ArtifactStore


def _session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


def _owner(request: Request) -> str:
    return getattr(request.state, "owner", "default")


def _viewer(request: Request) -> Viewer:
    """The caller as the registry sees it (set by api.auth.ApiKeyMiddleware)."""
    return Viewer(getattr(request.state, "owner", "default"), admin=getattr(request.state, "admin", False))


def _store(settings: Annotated[Settings, Depends(get_settings)]) -> ArtifactStore:
    return ArtifactStore(settings.data_dir)


def _inference(request: Request) -> InferenceService:
    return request.app.state.inference


SettingsDep = Annotated[Settings, Depends(get_settings)]
# scope="function": the transaction commits before the response is sent, so a client that
# reads its own write right after (upload, then POST /jobs) always sees it.
SessionDep = Annotated[Session, Depends(_session, scope="function")]
OwnerDep = Annotated[str, Depends(_owner)]
ViewerDep = Annotated[Viewer, Depends(_viewer)]
StoreDep = Annotated[ArtifactStore, Depends(_store)]
InferenceDep = Annotated[InferenceService, Depends(_inference)]
