"""The warm training process (FTSERVE_WARM_TRAINING_PROCESS): a job runs in the standby the worker started
before it (torch already imported), whose output then goes to the job's attempt log, and the next standby is
started at once; with the setting off, each job's process starts cold."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings, get_settings
from registry import jobs as jobrepo
from registry.db import migrate, session_scope
from registry.models import Job
from registry.store import ArtifactStore
from worker import execute


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    for key, value in {"FTSERVE_DATA_DIR": str(tmp_path / "data"), "HF_HOME": str(tmp_path / "hf"),
                       "HF_HUB_OFFLINE": "1", "FTSERVE_HUB_PROBE": "false"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("FTSERVE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    migrate(settings)
    yield settings
    if execute._standby is not None:
        execute._standby.kill()
        execute._standby.wait()
        execute._standby = None
    get_settings.cache_clear()


def _import_job() -> str:
    """A job that fails fast in its training process: a hub model neither cached nor reachable (offline)."""
    job_id = f"job_{secrets.token_hex(6)}"
    with session_scope() as s:
        jobrepo.create_job(s, Job(id=job_id, owner="t", kind="import", task="auto", model_name="nothing",
                                  spec={"hub": "nobody/nothing", "revision": None, "task": None}))
    return job_id


def _job(job_id: str) -> Job:
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def test_a_job_runs_in_the_standby_and_the_next_one_is_started(settings: Settings) -> None:
    execute.prepare_standby(settings)
    assert execute._standby is not None
    standby = execute._standby.pid
    job_id = _import_job()
    assert execute.execute_job(job_id, settings=settings) == "failed"
    job = _job(job_id)
    assert job.error_type == "user" and "nobody/nothing" in (job.error_message or ""), job.error_message
    log = (ArtifactStore(settings.data_dir).job_dir(job_id) / "logs" / "attempt-1.log").read_text()
    assert f"training process {standby} was started" in log, log  # the standby ran it, its output in the log
    assert execute._standby is not None and execute._standby.pid != standby
    assert execute._standby.poll() is None  # the next job's process, waiting


def test_with_the_setting_off_a_job_starts_its_own_process(settings: Settings) -> None:
    cold = settings.model_copy(update={"warm_training_process": False})
    job_id = _import_job()
    assert execute.execute_job(job_id, settings=cold) == "failed"
    log = (ArtifactStore(settings.data_dir).job_dir(job_id) / "logs" / "attempt-1.log").read_text()
    assert "was started" not in log and "nobody/nothing" in _job(job_id).error_message  # type: ignore[operator]
    assert execute._standby is None
