"""Model-ref resolution on the embedded SQLite: the one-query path and the messages of a miss."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from core.errors import NotFound, ValidationFailed
from core.settings import Settings
from registry import versions
from registry.db import migrate, session_scope
from registry.models import ModelAlias, ModelVersion, RegisteredModel


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    settings = Settings(data_dir=tmp_path)
    migrate(settings)
    with session_scope(settings.sqlalchemy_url) as s:
        s.add(RegisteredModel(name="m", task="classification", owner="t"))
        s.add(RegisteredModel(name="empty", task="classification", owner="t"))
        s.flush()
        for v in (1, 2, 3):
            s.add(ModelVersion(name="m", version=v, task="classification", owner="t", base_model="b",
                               base_model_resolved="b", path=f"/v{v}"))
        s.add(ModelAlias(name="m", alias="staging", version=1))
        s.flush()
        yield s


def version_of(s: Session, ref: str) -> int:
    return versions.resolve(s, ref).version


def test_refs_resolve_to_the_version_they_name_now(session: Session) -> None:
    assert version_of(session, "m") == 3  # newest, no production alias
    assert version_of(session, "m:2") == 2
    assert version_of(session, "m@staging") == 1
    session.add(ModelAlias(name="m", alias="production", version=2))
    session.flush()
    assert version_of(session, "m") == 2  # production wins over newest
    alias = session.get(ModelAlias, ("m", "staging"))
    assert alias is not None
    alias.version = 3
    session.flush()
    assert version_of(session, "m@staging") == 3


@pytest.mark.parametrize(("ref", "message"), [
    ("nope", "model 'nope' not found"),
    ("m:9", "no version 9"),
    ("m@gone", "has no alias 'gone'"),
    ("empty", "model 'empty' not found"),
    ("Bad Ref!", "refs look like"),
])
def test_misses_say_what_is_missing(session: Session, ref: str, message: str) -> None:
    with pytest.raises(NotFound, match=message):
        versions.resolve(session, ref)


def test_task_mismatch_names_the_right_endpoint(session: Session) -> None:
    with pytest.raises(ValidationFailed, match="served by /classify"):
        versions.resolve_for_task(session, "m", "generation")
