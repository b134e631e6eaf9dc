"""Applying a promotion decision (worker/promotion.py) inside the registration's fenced transaction: the alias moves
and the job records the decision and an event; an alias moved meanwhile stays; a stale attempt changes nothing."""

from __future__ import annotations

import secrets

import pytest

from registry import jobs as jobrepo
from registry.db import session_scope
from registry.jobs import Fence, Superseded
from registry.models import Job, JobEvent, ModelAlias, ModelVersion, RegisteredModel
from tests.worker.test_operations import settings  # noqa: F401 (fixture: a migrated SQLite data dir)
from worker.promotion import Decision


def _setup(alias_version: int | None) -> Fence:
    name = f"m{secrets.token_hex(3)}"
    job_id = f"job_{secrets.token_hex(6)}"
    with session_scope() as s:
        s.add(RegisteredModel(name=name, task="classification", owner="t"))
        s.flush()
        for v in (1, 2, 3):
            s.add(ModelVersion(name=name, version=v, task="classification", owner="t", base_model="b",
                               base_model_resolved="hub:b", path="/x"))
        s.flush()
        if alias_version is not None:
            s.add(ModelAlias(name=name, alias="production", version=alias_version))
        jobrepo.create_job(s, Job(id=job_id, owner="t", task="classification", spec={}, model_name=name))
    with session_scope() as s:
        job = jobrepo.claim(s, job_id, worker_id="w")
        assert job is not None
        return Fence(job_id=job_id, worker_id="w", attempt=job.attempt)


def _decision(*, moved: bool, current_version: int | None) -> Decision:
    return Decision(alias="production", metric="f1_macro", min_improvement=0.0, new=0.9,
                    current=None if current_version is None else 0.5, current_version=current_version, moved=moved,
                    dataset={"id": "ds_x"})


def _apply(fence: Fence, decision: Decision, version: int = 3) -> dict[str, object]:
    with session_scope() as s:
        jobrepo.hold(s, fence)
        job = jobrepo.get_job(s, fence.job_id)
        return decision.apply(s, fence, name=job.model_name, version=version)


def _state(fence: Fence) -> tuple[int | None, dict[str, object] | None, list[str]]:
    with session_scope() as s:
        job = jobrepo.get_job(s, fence.job_id)
        alias = s.get(ModelAlias, (job.model_name, "production"))
        types = [e.type for e in s.query(JobEvent).filter(JobEvent.job_id == fence.job_id)]
        return (alias.version if alias else None), job.promotion, types


@pytest.mark.parametrize(("alias_version", "moved", "expected_alias"), [(None, True, 3), (1, True, 3), (1, False, 1)])
@pytest.mark.usefixtures("settings")
def test_the_decision_is_applied_and_recorded(alias_version: int | None, moved: bool, expected_alias: int) -> None:
    fence = _setup(alias_version)
    promotion = _apply(fence, _decision(moved=moved, current_version=alias_version))
    alias, stored, types = _state(fence)
    assert alias == expected_alias and stored == promotion and types[-1] == "promotion"
    assert (stored["moved"], stored["version"], stored["current_version"]) == (moved, 3, alias_version)
    assert "reason" not in stored


@pytest.mark.usefixtures("settings")
def test_an_alias_moved_while_evaluating_stays() -> None:
    fence = _setup(2)  # evaluated against version 1, but someone put production on 2 meanwhile
    promotion = _apply(fence, _decision(moved=True, current_version=1))
    alias, _, _ = _state(fence)
    assert alias == 2 and promotion["moved"] is False and "moved to version 2" in str(promotion["reason"])


@pytest.mark.usefixtures("settings")
def test_a_stale_attempt_moves_nothing() -> None:
    fence = _setup(1)
    with session_scope() as s:
        jobrepo.requeue(s, fence.job_id, fence=fence, message="lost")
    with pytest.raises(Superseded):
        _apply(fence, _decision(moved=True, current_version=1))
    alias, stored, types = _state(fence)
    assert (alias, stored) == (1, None) and "promotion" not in types
