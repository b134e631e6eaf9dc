"""Fencing with real processes on PostgreSQL + Redis: a worker that cannot renew its lease stops its training
process before another attempt may start, and only the attempt that owns the row writes its outcome.

The heartbeat's database writes are made to fail by a failpoint (the worker stays alive and keeps training,
as it would when only its database connection is cut); the reconciler re-queues the job once the lease
expires, and the second attempt resumes from the first one's checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import fresh_pg_database
from tests.e2e.test_classification import csv_slice
from tests.e2e.test_lifecycle import LIFECYCLE_ENV, newest_checkpoint, submit, wait_for
from tests.stack import TERMINAL, Stack, descendants, free_port
from worker.failpoints import switch_path as failpoint_switch

LEASE_SECONDS = float(LIFECYCLE_ENV["FTSERVE_LEASE_SECONDS"])
HEARTBEAT_SECONDS = float(LIFECYCLE_ENV["FTSERVE_HEARTBEAT_SECONDS"])


@pytest.fixture(scope="module")
def train_csv(shared_data: Path) -> bytes:
    return csv_slice(shared_data / "classification" / "train.csv", 300)


@pytest.fixture(scope="module")
def fenced_stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str) -> Iterator[Stack]:
    failpoints = ",".join([
        "heartbeat=fail@fenced#1?cut",  # armed by the test once attempt 1 trains
        "before_train=kill_worker@twice-lost#1",
        "before_train=kill_worker@twice-lost#2",
    ])
    with fresh_pg_database() as url, Stack(
        data_dir=tmp_path_factory.mktemp("fenced"),
        env={**LIFECYCLE_ENV, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "FTSERVE_DATABASE_URL": url,
             "FTSERVE_BROKER_URL": redis_url, "FTSERVE_QUEUE": f"fenced_{free_port()}",
             "FTSERVE_MAX_ATTEMPTS": "3", "FTSERVE_FAILPOINTS": failpoints},
    ) as s:
        yield s


def training_process(stack: Stack, job_id: str) -> int | None:
    """The pid of the job's training process under the worker: a `python -m worker.child` whose output is the
    job's attempt log (a standby started before its job has no job id in its command line)."""
    for pid in descendants(stack.procs["worker"].pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            output = os.readlink(f"/proc/{pid}/fd/1")
        except OSError:
            continue  # exited while we looked
        if b"worker.child" in argv and f"/jobs/{job_id}/logs/" in output:
            return pid
    return None


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_worker_that_cannot_renew_its_lease_stops_training_and_the_next_attempt_owns_the_job(
        fenced_stack: Stack, train_csv: bytes) -> None:
    stack = fenced_stack
    ds = stack.upload(content=train_csv, filename="train.csv").json()["id"]
    job_id = submit(stack, ds, "fenced", max_steps=600, eval_steps=40, logging_steps=5)
    pid = wait_for("attempt 1's training process", lambda: training_process(stack, job_id), timeout=60)
    checkpoints = stack.data_dir / "jobs" / job_id / "checkpoints"
    wait_for("attempt 1's first checkpoint", lambda: newest_checkpoint(checkpoints), timeout=180)
    switch = failpoint_switch(stack.data_dir, "cut")
    switch.parent.mkdir(parents=True, exist_ok=True)
    switch.touch()  # from now on, every heartbeat of attempt 1 fails
    cut_at = time.monotonic()

    # Watch attempt 1 until its process is gone: the job must still be attempt 1's then (stopped before the
    # lease could expire, not because another attempt took over), and within the lease minus one heartbeat.
    while running(pid):
        job = stack.client.get(f"/jobs/{job_id}").json()
        assert job["attempt"] == 1 and job["status"] == "running", job
        assert time.monotonic() - cut_at < LEASE_SECONDS + 30, f"attempt 1 still runs\n{stack.logs('worker')}"
        time.sleep(0.05)
    gone_at = datetime.now(UTC)
    stopped_after = time.monotonic() - cut_at
    assert stopped_after >= LEASE_SECONDS - 2 * HEARTBEAT_SECONDS, "not before the heartbeats had failed a while"
    assert "stopping the training process at once (SIGKILL)" in stack.logs("worker")
    assert "last successful heartbeat" in stack.logs("worker")

    job = stack.wait_job(job_id, timeout=240)
    assert job["status"] == "succeeded" and job["attempt"] == 2, (job["error"], stack.logs("worker"))
    events = stack.events(job_id)
    started = [e for e in events if e["type"] == "status" and e["data"].get("attempt") == 2
               and e["data"].get("status") == "running"]
    assert len(started) == 1 and datetime.fromisoformat(started[0]["created_at"]) > gone_at
    assert started[0]["data"].get("resumed_from_step", 0) > 0  # from attempt 1's checkpoint
    terminal = [e for e in events if e["type"] == "status" and e["data"].get("status") in TERMINAL]
    assert [e["data"]["status"] for e in terminal] == ["succeeded"]
    versions = stack.client.get("/models/fenced").json()["versions"]
    assert [v["version"] for v in versions] == [1] and job["model"]["ref"] == "fenced:1"
    assert versions[0]["job_id"] == job_id
    model_dir = stack.data_dir / "models" / "fenced"
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".publish")) == ["1"]
    assert not (stack.data_dir / "jobs" / job_id / "checkpoints").exists()
    r = stack.client.post("/classify", json={"model": "fenced", "inputs": ["a fine film"]})
    assert r.status_code == 200 and r.json()["model"] == "fenced:1", r.text


def test_a_job_whose_worker_was_lost_twice_succeeds_at_attempt_3(fenced_stack: Stack, train_csv: bytes) -> None:
    stack = fenced_stack
    ds = stack.upload(content=train_csv, filename="train.csv").json()["id"]
    job_id = submit(stack, ds, "twice-lost", max_steps=3)
    deaths = 0
    deadline = time.monotonic() + 180
    while (job := stack.client.get(f"/jobs/{job_id}").json())["status"] not in TERMINAL:
        if not stack.alive("worker"):
            deaths += 1
            stack.procs.pop("worker").wait()
            stack.start_worker()  # the operator's supervisor brings a worker back
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert deaths == 2
    assert job["status"] == "succeeded" and job["attempt"] == 3, job
    lost = [e for e in stack.events(job_id) if e["data"].get("status") == "queued" and "worker lost" in e["message"]]
    assert [e["data"]["attempt"] for e in lost] == [1, 2]
    assert [v["version"] for v in stack.client.get("/models/twice-lost").json()["versions"]] == [1]
