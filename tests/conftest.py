"""Session fixtures: tiny models in an HF cache, a fresh PostgreSQL database, Redis, and real processes.

Nothing here skips: a missing Redis or PostgreSQL fails the run.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.stack import Stack

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
PG_ADMIN_URL = os.environ.get("FTSERVE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FTSERVE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"shared datasets not found at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Built in a subprocess so this process's HF libraries keep their own settings."""
    home = tmp_path_factory.mktemp("hf_home")
    code = (
        "import sys; from pathlib import Path; from tests import tinymodels as t;"
        "t.build_tiny_bert(Path(sys.argv[1]), Path(sys.argv[2])); t.build_test_hub_datasets(Path(sys.argv[2]));"
        "t.build_tiny_t5(Path(sys.argv[1]), Path(sys.argv[2]));"
        "from tests.tiny_gpt2 import build_tiny_gpt2; build_tiny_gpt2(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    subprocess.run([sys.executable, "-c", code, str(shared_data), str(home)], check=True, cwd=REPO)
    return home


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one stack (stacks sharing one would run each other's jobs)."""
    import psycopg

    name = f"ftserve_test_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required at {PG_ADMIN_URL} and is not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def live_stack(data_dir: Path, hf_home: Path, redis_url: str, *, workers: int = 1, **env: str) -> Iterator[Stack]:
    """A stack on a fresh PostgreSQL database and its own queue, with these settings."""
    from tests.stack import free_port

    with fresh_pg_database() as url, Stack(
        data_dir=data_dir, workers=workers,
        env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "FTSERVE_DATABASE_URL": url,
             "FTSERVE_BROKER_URL": redis_url, "FTSERVE_QUEUE": f"{data_dir.name}_{free_port()}", **env},
    ) as s:
        yield s


@contextmanager
def keyed_stack(data_dir: Path, hf_home: Path, redis_url: str, *, keys: str, **env: str) -> Iterator[Stack]:
    """A stack on a fresh PostgreSQL database and its own queue, with auth on (`keys`: FTSERVE_API_KEYS)."""
    with live_stack(data_dir, hf_home, redis_url, FTSERVE_API_KEYS=keys, **env) as s:
        yield s


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} and is not reachable: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def pg_stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, pg_url: str, redis_url: str
             ) -> Iterator[Stack]:
    """uvicorn + a Celery worker as real processes on PostgreSQL and Redis."""
    stack = Stack(
        data_dir=tmp_path_factory.mktemp("pg_stack"),
        env={
            "FTSERVE_DATABASE_URL": pg_url,
            "FTSERVE_BROKER_URL": redis_url,
            "FTSERVE_QUEUE": f"ftserve_test_{secrets.token_hex(4)}",
            "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "1",
        },
    )
    with stack:
        yield stack


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path) -> Iterator[Stack]:
    """The embedded defaults: SQLite in the data dir and the filesystem broker, no server needed."""
    stack = Stack(
        data_dir=tmp_path_factory.mktemp("embedded_stack"),
        env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"},
    )
    with stack:
        yield stack
