"""The registry stamp changes after a commit that touches versions or aliases, and only then."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import get_settings
from registry.db import migrate, session_scope
from registry.models import Dataset, ModelAlias, ModelVersion, RegisteredModel
from registry.stamp import read_stamp


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("FTSERVE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FTSERVE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    migrate(get_settings())
    yield tmp_path
    get_settings.cache_clear()


def test_version_and_alias_commits_replace_the_stamp(data_dir: Path) -> None:
    assert read_stamp(data_dir) is None
    with session_scope() as s:
        s.add(RegisteredModel(name="m", task="classification", owner="t"))
    assert read_stamp(data_dir) is None  # a model row alone changes no resolution
    with session_scope() as s:
        s.add(ModelVersion(name="m", version=1, task="classification", owner="t", base_model="b",
                           base_model_resolved="b", path="/v1"))
        s.flush()
        assert read_stamp(data_dir) is None  # not before the commit
    first = read_stamp(data_dir)
    assert first is not None
    with session_scope() as s:
        s.add(ModelAlias(name="m", alias="production", version=1))
    second = read_stamp(data_dir)
    assert second not in (None, first)
    with session_scope() as s:
        alias = s.get(ModelAlias, ("m", "production"))
        assert alias is not None
        s.delete(alias)
    assert read_stamp(data_dir) not in (None, first, second)


def test_rolled_back_and_unrelated_commits_leave_it(data_dir: Path) -> None:
    with session_scope() as s:
        s.add(RegisteredModel(name="m", task="classification", owner="t"))
    with pytest.raises(RuntimeError), session_scope() as s:
        s.add(ModelVersion(name="m", version=1, task="classification", owner="t", base_model="b",
                           base_model_resolved="b", path="/v1"))
        s.flush()
        raise RuntimeError("abort")
    assert read_stamp(data_dir) is None
    with session_scope() as s:
        s.add(Dataset(id="d1", owner="t", name="x", file_name="x.csv", format="csv", num_rows=1, columns=["text"],
                      size_bytes=1, sha256="0" * 64))
    assert read_stamp(data_dir) is None
