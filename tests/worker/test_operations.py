"""The operation runner (worker/operations.py): the outcome of a non-training job is written fenced, a user
error fails the job with its message, the secret is wiped whatever the outcome, a stale attempt writes nothing."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import UserError
from core.settings import Settings, get_settings
from registry import jobs as jobrepo
from registry.db import migrate, session_scope
from registry.jobs import Fence
from registry.models import Job, JobEvent
from registry.store import ArtifactStore
from worker import operations
from worker.child import EXIT_SUPERSEDED, JobCallbacks
from worker.operations import OperationCancelled, OperationContext, Outcome, operation

SEEN: dict[str, object] = {}


@operation("test-echo")
def _echo(ctx: OperationContext) -> Outcome:
    SEEN["secret"] = ctx.job.secret
    SEEN["repr"] = repr(ctx.job)
    behaviour = ctx.job.spec["behaviour"]
    if behaviour == "user-error":
        raise UserError("the repo id is not yours: push under a namespace you own")
    if behaviour == "cancel":
        raise OperationCancelled
    if behaviour == "crash":
        raise RuntimeError("boom at /srv/secret/path")
    ctx.callbacks.on_event("log", "echoing", {})
    return Outcome(result={"echo": ctx.job.spec["value"]})


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("FTSERVE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FTSERVE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    migrate(settings)
    yield settings
    get_settings.cache_clear()


def _job(behaviour: str) -> Fence:
    job_id = f"op_{secrets.token_hex(6)}"
    with session_scope() as s:
        jobrepo.create_job(s, Job(id=job_id, owner="t", kind="test-echo", task="classification",
                                  spec={"behaviour": behaviour, "value": 42}, model_name="m", model_version=1,
                                  secret="hf_SECRET_TOKEN"))
    with session_scope() as s:
        job = jobrepo.claim(s, job_id, worker_id="w")
        assert job is not None
        return Fence(job_id=job_id, worker_id="w", attempt=job.attempt)


def _run(fence: Fence, settings: Settings) -> int:
    return operations.run_operation("test-echo", fence, settings=settings, store=ArtifactStore(settings.data_dir),
                                    callbacks=JobCallbacks(fence, settings))


def _row(job_id: str) -> tuple[Job, list[str]]:
    with session_scope() as s:
        job = jobrepo.get_job(s, job_id)
        s.expunge(job)
        messages = [e.message for e in s.query(JobEvent).filter(JobEvent.job_id == job_id).order_by(JobEvent.id)]
        return job, messages


@pytest.mark.parametrize(("behaviour", "status", "error_type"), [
    ("ok", "succeeded", None), ("user-error", "failed", "user"), ("cancel", "cancelled", None),
    ("crash", "failed", "system"),
])
def test_outcomes_are_written_and_the_secret_wiped(settings: Settings, behaviour: str, status: str,
                                                   error_type: str | None) -> None:
    fence = _job(behaviour)
    assert _run(fence, settings) == 0
    job, messages = _row(fence.job_id)
    assert (job.status, job.error_type) == (status, error_type)
    assert job.secret is None
    assert SEEN["secret"] == "hf_SECRET_TOKEN" and "hf_SECRET" not in str(SEEN["repr"])
    if behaviour == "ok":
        assert job.result == {"echo": 42} and "echoing" in messages
    if behaviour == "user-error":
        assert job.error_message == "the repo id is not yours: push under a namespace you own"
    if behaviour == "crash":
        assert "RuntimeError: boom" in str(job.error_message) and "/srv/secret" not in str(job.error_message)
    assert not any("hf_SECRET" in m for m in messages)


def test_a_stale_attempt_writes_nothing(settings: Settings) -> None:
    fence = _job("ok")
    with session_scope() as s:
        jobrepo.requeue(s, fence.job_id, fence=fence, message="lost")
    _, events = _row(fence.job_id)
    assert _run(fence, settings) == EXIT_SUPERSEDED
    after, events_after = _row(fence.job_id)
    assert (after.status, after.result, after.secret, events_after) == ("queued", None, "hf_SECRET_TOKEN", events)


def test_a_cancelled_queued_job_forgets_its_secret(settings: Settings) -> None:
    job_id = f"op_{secrets.token_hex(6)}"
    with session_scope() as s:
        jobrepo.create_job(s, Job(id=job_id, owner="t", kind="push", task="classification", spec={},
                                  model_name="m", model_version=1, secret="hf_x"))
    with session_scope() as s:
        jobrepo.request_cancel(s, job_id)
    assert _row(job_id)[0].secret is None


def test_unknown_kinds_are_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="no-such-kind"):
        operations.find("no-such-kind")
