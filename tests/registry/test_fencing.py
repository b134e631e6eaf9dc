"""Fenced writes: an attempt that lost its job row writes nothing (and learns so), on SQLite and PostgreSQL.

The lost attempt is made the way it happens in production: the job is re-queued under it (its lease expired)
and claimed again, by another worker, as the next attempt.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from core.settings import Settings, get_settings
from registry import jobs as jobrepo
from registry.db import migrate, session_scope
from registry.jobs import Fence, Superseded
from registry.models import Job, JobEvent, ModelVersion, RegisteredModel
from registry.store import ArtifactStore
from tests.conftest import fresh_pg_database
from worker import child
from worker.execute import reconcile


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None  # the default: a file in each test's data dir
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def settings(database_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("FTSERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FTSERVE_LEASE_SECONDS", "4")
    monkeypatch.setenv("FTSERVE_HEARTBEAT_SECONDS", "1")
    if database_url is None:
        monkeypatch.delenv("FTSERVE_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("FTSERVE_DATABASE_URL", database_url)
    get_settings.cache_clear()
    settings = get_settings()
    migrate(settings)
    yield settings
    get_settings.cache_clear()


def _new_job(*, model_name: str) -> str:
    job_id = f"job_{secrets.token_hex(6)}"
    spec = {"task": "classification", "base_model": "b", "dataset": {"id": "ds_x"},
            "validation": {"split_ratio": 0.1}, "columns": {"text": "text", "label": "label"},
            "hyperparameters": {}, "model_name": model_name}
    with session_scope() as s:
        jobrepo.create_job(s, Job(id=job_id, owner="t", task="classification", spec=spec, model_name=model_name,
                                  base_model_resolved="hub:b"))
    return job_id


def _claim(job_id: str, worker_id: str) -> Fence:
    with session_scope() as s:
        job = jobrepo.claim(s, job_id, worker_id=worker_id)
        assert job is not None
        return Fence(job_id=job_id, worker_id=worker_id, attempt=job.attempt)


def _lose(fence: Fence) -> None:
    """What the reconciler does once the attempt's lease expired."""
    with session_scope() as s:
        jobrepo.requeue(s, fence.job_id, fence=fence, message="worker lost; job re-queued")


def _row(job_id: str) -> dict[str, Any]:
    with session_scope() as s:
        job = jobrepo.get_job(s, job_id)
        events = s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id))
        return {c: getattr(job, c) for c in ("status", "worker_id", "attempt", "progress", "data_stats", "metrics",
                                             "error_type", "model_version", "next_event_id", "finished_at")
                } | {"events": events}


@pytest.fixture
def superseded(settings: Settings) -> tuple[Fence, Fence]:
    """(attempt 1, which lost the job while it ran; attempt 2, which owns it now)."""
    job_id = _new_job(model_name=f"m{secrets.token_hex(3)}")
    first = _claim(job_id, "worker-a")
    with session_scope() as s:
        jobrepo.set_progress(s, job_id, {"step": 3}, fence=first)  # fine while it owns the row
    _lose(first)
    second = _claim(job_id, "worker-b")
    assert (first.attempt, second.attempt) == (1, 2)
    return first, second


def test_a_stale_fence_writes_nothing_and_raises(superseded: tuple[Fence, Fence]) -> None:
    stale, current = superseded
    job_id = stale.job_id
    before = _row(job_id)
    writes = [
        lambda s: jobrepo.set_progress(s, job_id, {"step": 99}, fence=stale),
        lambda s: jobrepo.set_data_stats(s, job_id, {"train_rows": 1}, fence=stale),
        lambda s: jobrepo.add_event(s, job_id, "metrics", "", {"step": 99}, fence=stale),
        lambda s: jobrepo.finish(s, job_id, fence=stale, status=jobrepo.SUCCEEDED, metrics={"f1": 1.0},
                                 model_version=7),
        lambda s: jobrepo.finish(s, job_id, fence=stale, status=jobrepo.FAILED, error_type="system",
                                 error_message="stale"),
        lambda s: jobrepo.requeue(s, job_id, fence=stale, message="stale"),
        lambda s: jobrepo.hold(s, stale),
        lambda s: jobrepo.is_cancel_requested(s, job_id, fence=stale),
    ]
    for write in writes:
        with pytest.raises(Superseded), session_scope() as s:
            write(s)
    with session_scope() as s:
        assert jobrepo.heartbeat(s, stale) == "lost"
    assert _row(job_id) == before
    # The owner's writes still land, and its outcome is the one the row shows.
    with session_scope() as s:
        jobrepo.set_progress(s, job_id, {"step": 5}, fence=current)
        jobrepo.add_event(s, job_id, "metrics", "", {"step": 5}, fence=current)
        assert jobrepo.heartbeat(s, current) == "renewed"
        jobrepo.finish(s, job_id, fence=current, status=jobrepo.SUCCEEDED, metrics={"f1": 0.5}, model_version=1)
    row = _row(job_id)
    assert (row["status"], row["attempt"], row["worker_id"], row["model_version"]) == (
        "succeeded", 2, "worker-b", 1)
    assert row["events"] == before["events"] + 2


def test_finishing_again_is_a_no_op_and_the_lease_reports_ended(superseded: tuple[Fence, Fence]) -> None:
    stale, current = superseded
    with session_scope() as s:
        jobrepo.finish(s, current.job_id, fence=current, status=jobrepo.CANCELLED)
    once = _row(current.job_id)
    with session_scope() as s:  # a retry whose first commit's reply was lost: no second terminal event
        jobrepo.finish(s, current.job_id, fence=current, status=jobrepo.CANCELLED)
    assert _row(current.job_id) == once
    with pytest.raises(Superseded), session_scope() as s:  # another outcome is not a retry
        jobrepo.finish(s, current.job_id, fence=current, status=jobrepo.SUCCEEDED)
    with session_scope() as s:
        assert jobrepo.heartbeat(s, current) == "ended"  # its own outcome: the process is on its way out
        assert jobrepo.heartbeat(s, stale) == "lost"
    terminal = [e for e in _events(current.job_id) if e.data.get("status") in jobrepo.TERMINAL]
    assert len(terminal) == 1


def _events(job_id: str) -> list[JobEvent]:
    with session_scope() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def test_a_claim_retried_by_its_worker_returns_the_same_attempt(settings: Settings) -> None:
    job_id = _new_job(model_name="claims")
    first = _claim(job_id, "worker-a")
    again = _claim(job_id, "worker-a")  # its first commit's reply was lost
    assert again == first
    with session_scope() as s:
        assert jobrepo.claim(s, job_id, worker_id="worker-b") is None


def test_the_reconciler_leaves_a_job_whose_lease_was_renewed(settings: Settings) -> None:
    job_id = _new_job(model_name="renewed")
    fence = _claim(job_id, "worker-a")
    expired = jobrepo.utcnow() - timedelta(seconds=10)
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=expired))
    cutoff = jobrepo.utcnow() - timedelta(seconds=settings.lease_seconds)
    reconciler_fence = Fence(job_id=job_id, worker_id="worker-a", attempt=1, expired_before=cutoff)
    with session_scope() as s:  # the worker's heartbeat gets through before the reconciler acts
        assert jobrepo.heartbeat(s, fence) == "renewed"
    with pytest.raises(Superseded), session_scope() as s:
        jobrepo.requeue(s, job_id, fence=reconciler_fence, message="worker lost")
    assert _row(job_id)["status"] == "running"

    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=expired))
    sent: list[str] = []
    assert reconcile(settings, send=sent.append)["requeued"] == 1
    assert sent == [job_id]
    row = _row(job_id)
    assert (row["status"], row["worker_id"], row["attempt"]) == ("queued", None, 1)
    with session_scope() as s:
        assert jobrepo.heartbeat(s, fence) == "lost"
    assert _claim(job_id, "worker-b").attempt == 2  # attempts count started attempts


@dataclass
class _Result:
    metrics: dict[str, float] = field(default_factory=lambda: {"f1_macro": 0.5})
    training_params: dict[str, Any] = field(default_factory=lambda: {"data": {"dataset_id": "ds_x"}})


def _staged(store: ArtifactStore, fence: Fence, model_name: str) -> Path:
    staging = store.staging_dir(model_name, fence.job_id, fence.attempt)
    staging.mkdir(parents=True)
    (staging / "config.json").write_text("{}")
    return staging


def test_a_stale_register_publishes_and_registers_nothing(superseded: tuple[Fence, Fence],
                                                           settings: Settings) -> None:
    from training.spec import JobSpec

    stale, current = superseded
    store = ArtifactStore(settings.data_dir)
    with session_scope() as s:
        spec = JobSpec.model_validate(jobrepo.get_job(s, stale.job_id).spec)
    name = spec.model_name
    staging = _staged(store, stale, name)
    before = _row(stale.job_id)
    with pytest.raises(Superseded):
        child._register(stale, spec=spec, result=_Result(), store=store, staging=staging, retry_for=2)
    assert staging.is_dir() and not (staging / "README.md").exists()  # not even the model card
    assert not store.version_dir(name, 1).exists()
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.name == name)) == 0
        assert s.get(RegisteredModel, name) is None
    assert _row(stale.job_id) == before

    staging = _staged(store, current, name)
    assert child._register(current, spec=spec, result=_Result(), store=store, staging=staging, retry_for=2) == 1
    assert not staging.exists() and (store.version_dir(name, 1) / "README.md").is_file()
    row = _row(current.job_id)
    assert (row["status"], row["attempt"], row["model_version"]) == ("succeeded", 2, 1)


def test_a_register_whose_commit_fails_takes_its_directory_back(superseded: tuple[Fence, Fence],
                                                                 settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that goes away at the commit: the rename is undone, and the retry publishes it."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    from training.spec import JobSpec

    _, current = superseded
    store = ArtifactStore(settings.data_dir)
    with session_scope() as s:
        spec = JobSpec.model_validate(jobrepo.get_job(s, current.job_id).spec)
    staging = _staged(store, current, spec.model_name)
    real_commit = Session.commit
    seen: list[bool] = []

    def flaky_commit(session: Session) -> None:
        if not seen and session.info.get("registry_changed"):  # the registering transaction (registry/stamp)
            seen.append(store.version_dir(spec.model_name, 1).is_dir())  # published before the commit
            session.rollback()
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        real_commit(session)

    monkeypatch.setattr(Session, "commit", flaky_commit)
    version = child._register(current, spec=spec, result=_Result(), store=store, staging=staging, retry_for=5)
    assert seen == [True] and version == 1
    assert (store.version_dir(spec.model_name, 1) / "config.json").is_file() and not staging.exists()
    assert _row(current.job_id)["status"] == "succeeded"
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion)
                        .where(ModelVersion.name == spec.model_name)) == 1


def _checkpoint(folder: Path, step: int, *, best: int | None = None) -> Path:
    import json

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(os.urandom(64))
    state = {"global_step": step,
             "best_model_checkpoint": None if best is None else str(folder / f"checkpoint-{best}")}
    (path / "trainer_state.json").write_text(json.dumps(state))
    return path


def test_a_new_attempt_resumes_from_hard_links_of_the_newest_earlier_checkpoint(tmp_path: Path) -> None:
    import json
    import shutil

    store = ArtifactStore(tmp_path)
    job_id = "job_links"
    one = store.attempt_checkpoints_dir(job_id, 1)
    _checkpoint(one, 20)
    _checkpoint(one, 40, best=20)
    (one / "checkpoint-60").mkdir()  # the worker died while saving it: no trainer_state.json
    _checkpoint(store.attempt_checkpoints_dir(job_id, 3), 80)  # a later attempt's: not this one's to take

    resume = child.link_resume_point(store, job_id=job_id, attempt=2)
    two = store.attempt_checkpoints_dir(job_id, 2)
    assert resume == two / "checkpoint-40"
    assert sorted(p.name for p in two.iterdir()) == ["checkpoint-20", "checkpoint-40"]
    weights = resume / "model.safetensors"
    assert os.path.samefile(weights, one / "checkpoint-40" / "model.safetensors")  # a link, not a copy
    state = json.loads((resume / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(two / "checkpoint-20")
    # The rewritten state is a file of its own: attempt 1's still names its own folder.
    assert json.loads((one / "checkpoint-40" / "trainer_state.json").read_text())["best_model_checkpoint"] == \
        str(one / "checkpoint-20")
    original = weights.read_bytes()
    shutil.rmtree(one)  # attempt 1, still running somewhere, rotates its checkpoints away
    assert weights.read_bytes() == original
    assert child.link_resume_point(store, job_id="job_none", attempt=1) is None


def test_failpoints_select_attempts_and_switches(tmp_path: Path) -> None:
    from worker import failpoints

    spec = "heartbeat=fail@fenced#1?armed,before_train=hang@slow"
    assert failpoints.find(spec, "heartbeat", model_name="fenced", attempt=1, data_dir=tmp_path) is None
    switch = failpoints.switch_path(tmp_path, "armed")
    switch.parent.mkdir()
    switch.touch()
    assert failpoints.find(spec, "heartbeat", model_name="fenced", attempt=1, data_dir=tmp_path) is not None
    assert failpoints.find(spec, "heartbeat", model_name="fenced", attempt=2, data_dir=tmp_path) is None
    assert failpoints.find(spec, "before_train", model_name="slow", attempt=4) is not None
    with pytest.raises(failpoints.InjectedFault):
        failpoints.hit(spec, "heartbeat", model_name="fenced", attempt=1, data_dir=tmp_path)
    failpoints.hit("", "heartbeat", model_name="fenced", attempt=1)  # inert when unset
    with pytest.raises(ValueError, match="bad failpoint"):
        failpoints.parse("heartbeat=explode@x")


def test_a_training_process_that_lost_its_job_learns_so_at_its_next_write(superseded: tuple[Fence, Fence],
                                                                        settings: Settings) -> None:
    stale, _ = superseded
    before = _row(stale.job_id)
    callbacks = child.JobCallbacks(stale, settings)
    for call in (lambda: callbacks.on_progress({"step": 9, "total_steps": 9}),
                 lambda: callbacks.on_event("metrics", "", {"step": 9}),
                 lambda: callbacks.on_data({"train_rows": 1}),
                 callbacks.should_stop):
        with pytest.raises(Superseded):
            call()
    # A process started for an attempt that already lost the job does not start at all.
    assert child.run_attempt(stale, settings) == child.EXIT_SUPERSEDED
    assert _row(stale.job_id) == before


def test_the_supervisor_settles_only_its_own_attempt(superseded: tuple[Fence, Fence], settings: Settings,
                                                     tmp_path: Path) -> None:
    from worker.execute import _settle

    stale, current = superseded
    before = _row(stale.job_id)
    log_path = tmp_path / "attempt-1.log"
    log_path.write_text("killed\n")
    assert _settle(stale, -9, timed_out=False, log_path=log_path, settings=settings) is None
    assert _row(stale.job_id) == before
    assert _settle(current, -9, timed_out=False, log_path=log_path, settings=settings) == "failed"
    row = _row(current.job_id)
    assert (row["status"], row["attempt"], row["error_type"]) == ("failed", 2, "system")
