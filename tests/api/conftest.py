"""An in-process API (FastAPI TestClient) on SQLite in a temp data dir: no uvicorn, no worker, no broker."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.settings import get_settings

# Small caps, so tests can go over them cheaply.
LIMITS = {"FTSERVE_MAX_BODY_BYTES": "65536", "FTSERVE_MAX_UPLOAD_BYTES": "1048576",
          "FTSERVE_MAX_DATASET_ROWS": "1000", "FTSERVE_MAX_DATASET_UNCOMPRESSED_BYTES": str(8 * 1024 * 1024)}


@pytest.fixture
def api(make_api: Callable[..., TestClient]) -> TestClient:
    return make_api()


@pytest.fixture
def make_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TestClient]]:
    """`make_api(FTSERVE_API_KEYS="alice:a", ...)`: an app on a fresh data dir, with these settings."""
    clients: list[TestClient] = []

    def make(**env: str) -> TestClient:
        client = _start(tmp_path, monkeypatch, env)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.__exit__(None, None, None)
        get_settings.cache_clear()


def _start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> TestClient:
    from api.main import create_app
    from registry.db import migrate

    for key in list(os.environ):
        if key.startswith("FTSERVE_"):
            monkeypatch.delenv(key)
    # configure_environment() sets these when absent; set them here so the test process gets them back.
    for key, value in {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_HUB_ETAG_TIMEOUT": "1",
                       "HF_HUB_DOWNLOAD_TIMEOUT": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FTSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FTSERVE_HUB_PROBE", "false")
    for key, value in {**LIMITS, **env}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    migrate(get_settings())
    # Entered, so that every request runs on one event loop (the batchers live on it). Addressed to localhost:
    # with auth off, the API answers nothing else.
    client = TestClient(create_app(), raise_server_exceptions=False, base_url="http://localhost")
    client.__enter__()
    return client
