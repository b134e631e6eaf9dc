"""InferenceService instances for tests that run requests through it without HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from inference.service import InferenceService


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., InferenceService]]:
    """`make_service(**settings)`: a service on a temporary data dir; its model threads end with the test."""
    made: list[InferenceService] = []

    def make(**settings: Any) -> InferenceService:
        made.append(InferenceService(Settings(data_dir=tmp_path / "data", **settings)))
        return made[-1]

    yield make
    for service in made:
        for executor in list(service._executors.values()):
            executor.shutdown(wait=True)
