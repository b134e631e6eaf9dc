"""Job lifecycle with real processes: crash and resume, cancel, broker loss, SSE, idempotency, limits.

Jobs are made long with `max_steps`, never with sleeps. Crash-resume and cancel run on PostgreSQL + Redis
and on the embedded defaults (SQLite + filesystem broker); the rest on PostgreSQL.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fresh_pg_database
from tests.e2e.test_classification import csv_slice
from tests.stack import TERMINAL, Stack, free_port
from tests.tinymodels import TINY_BERT

# Short leases so a lost worker is noticed in seconds; the reconciler runs every second.
LIFECYCLE_ENV = {
    "FTSERVE_HEARTBEAT_SECONDS": "1",
    "FTSERVE_LEASE_SECONDS": "4",
    "FTSERVE_RECONCILE_SECONDS": "1",
    "FTSERVE_REQUEUE_AFTER_SECONDS": "2",
    "FTSERVE_CANCEL_GRACE_SECONDS": "10",
    "FTSERVE_MAX_ATTEMPTS": "3",
}


def wait_for(what: str, check: Callable[[], Any], *, timeout: float = 120, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def newest_checkpoint(directory: Path) -> int | None:
    """The newest complete checkpoint in any attempt's folder of a job's `checkpoints/`."""
    steps = [int(m.group(1)) for p in directory.glob("attempt-*/checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "trainer_state.json").exists()]
    return max(steps, default=None)


@pytest.fixture(scope="module")
def train_csv(shared_data: Path) -> bytes:
    return csv_slice(shared_data / "classification" / "train.csv", 300)


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, hf_home: Path,
          redis_url: str) -> Iterator[Stack]:
    env = {**LIFECYCLE_ENV, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    if request.param == "sqlite":
        with Stack(data_dir=tmp_path_factory.mktemp("lifecycle_sqlite"), env=env) as s:
            yield s
        return
    with fresh_pg_database() as url, Stack(
        data_dir=tmp_path_factory.mktemp("lifecycle_pg"),
        env={**env, "FTSERVE_DATABASE_URL": url, "FTSERVE_BROKER_URL": redis_url,
             "FTSERVE_QUEUE": f"lifecycle_{free_port()}"},
    ) as s:
        yield s


def submit(stack: Stack, dataset_id: str, model_name: str, **hyperparameters: Any) -> str:
    r = stack.client.post("/jobs", json={
        "task": "classification", "base_model": TINY_BERT, "dataset": {"id": dataset_id},
        "model_name": model_name, "hyperparameters": {"batch_size": 8, **hyperparameters},
    })
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_worker_killed_mid_training_resumes_from_its_checkpoint(stack: Stack, train_csv: bytes) -> None:
    ds = stack.upload(content=train_csv, filename="train.csv").json()["id"]
    total = 240
    job_id = submit(stack, ds, "phoenix", max_steps=total, eval_steps=40, logging_steps=1)
    checkpoints = stack.data_dir / "jobs" / job_id / "checkpoints"
    wait_for("a first checkpoint", lambda: newest_checkpoint(checkpoints), timeout=180)

    killed = stack.kill_tree("worker")
    assert len(killed) >= 2, "the worker and its training process"
    job = stack.client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "running" and job["progress"]["step"] < total, job  # killed mid-training
    k = newest_checkpoint(checkpoints)
    assert k is not None and 0 < k < total

    stack.start_worker("worker")
    job = stack.wait_job(job_id)
    assert job["status"] == "succeeded", (job["error"], stack.logs("worker"))

    events = stack.events(job_id)
    lost = [e for e in events if e["type"] == "status" and e["data"].get("status") == "queued"
            and "worker lost" in e["message"]]
    assert len(lost) == 1, "the interruption is recorded"
    resumed = [e for e in events if e["type"] == "status" and "resumed_from_step" in e["data"]]
    assert [e["data"] for e in resumed] == [{"status": "running", "resumed_from_step": k, "attempt": 2}]
    steps = [e["data"]["step"] for e in events if e["type"] == "metrics" and "loss" in e["data"]
             and e["id"] > resumed[0]["id"]]
    # Attempt 2 runs exactly the optimizer steps that were left, starting right after the checkpoint.
    assert steps == list(range(k + 1, total + 1)), steps[:5]
    assert not checkpoints.exists() or not any(checkpoints.iterdir())

    # The "auto" hyperparameters were chosen once, by attempt 1, and written into the job: attempt 2 reused them.
    chosen = [e for e in events if e["message"].startswith("hyperparameters chosen (auto)")]
    assert len(chosen) == 1 and chosen[0]["id"] < resumed[0]["id"], chosen
    assert set(chosen[0]["data"]["auto"]) == {"epochs", "learning_rate", "warmup_steps"}  # batch_size was given
    hp = job["hyperparameters"]
    assert "auto" not in hp.values() and hp["batch_size"] == 8, hp
    assert {k: hp[k] for k in chosen[0]["data"]["auto"]} == chosen[0]["data"]["auto"]
    version = stack.client.get("/models/phoenix/versions/1").json()
    assert version["hyperparameters"] == hp, version

    r = stack.client.post("/classify", json={"model": "phoenix", "inputs": ["a fine film"]})
    assert r.status_code == 200 and r.json()["model"] == job["model"]["ref"], r.text


def test_cancel_queued_and_running_jobs_then_the_next_job_runs(stack: Stack, train_csv: bytes) -> None:
    ds = stack.upload(content=train_csv, filename="train.csv").json()["id"]
    running = submit(stack, ds, "doomed-running", max_steps=5000, eval_steps=20)
    queued = submit(stack, ds, "doomed-queued", max_steps=5)
    checkpoints = stack.data_dir / "jobs" / running / "checkpoints"
    wait_for("a checkpoint of the running job", lambda: newest_checkpoint(checkpoints), timeout=180)

    r = stack.client.post(f"/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text  # at once
    r = stack.client.post(f"/jobs/{running}/cancel")
    assert r.status_code == 200 and r.json()["status"] in ("cancelling", "cancelled"), r.text
    job = stack.wait_job(running, timeout=60)
    assert job["status"] == "cancelled" and job["model"] is None, job
    assert job["progress"]["step"] < 5000
    assert not checkpoints.exists() or not any(checkpoints.iterdir()), list(checkpoints.iterdir())
    assert stack.client.get(f"/jobs/{queued}").json()["status"] == "cancelled"
    for name in ("doomed-running", "doomed-queued"):
        assert stack.client.get(f"/models/{name}").status_code == 404
    # The queued job never started.
    assert not [e for e in stack.events(queued) if e["data"].get("status") == "running"]
    r = stack.client.post(f"/jobs/{queued}/cancel")
    assert r.status_code == 200  # cancelling again is harmless

    after = submit(stack, ds, "survivor", max_steps=4)
    job = stack.wait_job(after)
    assert job["status"] == "succeeded", job["error"]
    r = stack.client.post(f"/jobs/{after}/cancel")
    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict", r.text
    assert stack.alive("worker")


# -- PostgreSQL only ------------------------------------------------------------------------------------


def test_sse_follows_a_running_job_and_resumes_with_last_event_id(pg_stack: Stack, train_csv: bytes) -> None:
    ds = pg_stack.upload(content=train_csv, filename="train.csv").json()["id"]
    job_id = submit(pg_stack, ds, "streamed", max_steps=60, logging_steps=2, eval_steps=30)
    headers = {"Accept": "text/event-stream"}
    first: list[dict[str, Any]] = []

    def read(response: httpx.Response, out: list[dict[str, Any]], stop_after: int | None) -> None:
        ident: int | None = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                ident = int(line[4:])
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["id"] == ident
                out.append(event)
                if stop_after is not None and len(out) >= stop_after:
                    return

    with httpx.Client(base_url=pg_stack.base_url, timeout=120) as client:
        with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            read(r, first, stop_after=4)  # then drop the connection mid-job
        rest: list[dict[str, Any]] = []
        with client.stream("GET", f"/jobs/{job_id}/events",
                           headers={**headers, "Last-Event-ID": str(first[-1]["id"])}) as r:
            read(r, rest, stop_after=None)  # the server closes the stream at the terminal state
    seen = first + rest
    ids = [e["id"] for e in seen]
    assert ids == list(range(1, len(ids) + 1)), ids  # no gap, no duplicate
    assert seen[-1]["type"] == "status" and seen[-1]["data"]["status"] in TERMINAL
    metric_points = [e for e in seen if e["type"] == "metrics" and "loss" in e["data"]]
    assert len(metric_points) >= 3
    assert seen == pg_stack.events(job_id)  # the same log as the JSON endpoint


def test_idempotency_key_returns_the_first_job(pg_stack: Stack, train_csv: bytes) -> None:
    ds = pg_stack.upload(content=train_csv, filename="train.csv").json()["id"]
    body = {"task": "classification", "base_model": TINY_BERT, "dataset": {"id": ds}, "model_name": "idem",
            "hyperparameters": {"max_steps": 2}}
    key = {"Idempotency-Key": f"retry-{free_port()}"}
    first = pg_stack.client.post("/jobs", json=body, headers=key)
    assert first.status_code == 201, first.text
    again = pg_stack.client.post("/jobs", json=body, headers=key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], again.text
    other = pg_stack.client.post("/jobs", json={**body, "model_name": "idem-other"}, headers=key)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["error"]["message"], other.text
    assert pg_stack.wait_job(first.json()["id"])["status"] == "succeeded"
    assert len(pg_stack.client.get("/models/idem").json()["versions"]) == 1

    # Keys are kept 24 h: a day later the same key starts a new job.
    import psycopg

    url = pg_stack.env["FTSERVE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET created_at = created_at - interval '25 hours' WHERE id = %s",
                     (first.json()["id"],))
    later = pg_stack.client.post("/jobs", json=body, headers=key)
    assert later.status_code == 201 and later.json()["id"] != first.json()["id"], later.text
    assert pg_stack.wait_job(later.json()["id"])["status"] == "succeeded"


def test_queue_position_counts_down_and_eta_is_set_while_running(pg_stack: Stack, train_csv: bytes) -> None:
    ds = pg_stack.upload(content=train_csv, filename="train.csv").json()["id"]
    ids = [submit(pg_stack, ds, f"line-{i}", max_steps=steps, logging_steps=5)
           for i, steps in enumerate((150, 10, 10))]
    positions: list[Any] = []
    etas: list[Any] = []
    deadline = time.monotonic() + 300
    while True:
        jobs = [pg_stack.client.get(f"/jobs/{i}").json() for i in ids]
        last = jobs[-1]
        if not positions or positions[-1] != last["queue_position"]:
            positions.append(last["queue_position"])
        if jobs[0]["status"] == "running" and jobs[0]["progress"]:
            etas.append(jobs[0]["progress"].get("eta_seconds"))
        if all(j["status"] in TERMINAL for j in jobs):
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(0.1)
    assert all(j["status"] == "succeeded" for j in jobs)
    # The last job waits behind two, then one, then runs; positions only ever count down.
    assert positions[0] == 2 and positions[-1] is None, positions
    numbers = [p for p in positions if p is not None]
    assert numbers == sorted(numbers, reverse=True) and 1 in numbers, positions
    assert any(isinstance(e, (int, float)) and e > 0 for e in etas), etas


def test_broker_restart_loses_the_message_but_not_the_job(tmp_path_factory: pytest.TempPathFactory,
                                                          hf_home: Path, train_csv: bytes) -> None:
    import redis

    port = free_port()
    redis_dir = tmp_path_factory.mktemp("redis")

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(redis_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port)
        wait_for("redis-server", lambda: _pings(client), timeout=20)
        return proc

    server = start_redis()
    queue = "broker_loss"
    try:
        with fresh_pg_database() as url, Stack(
            data_dir=tmp_path_factory.mktemp("broker_loss"), workers=0,
            env={**LIFECYCLE_ENV, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "FTSERVE_DATABASE_URL": url,
                 "FTSERVE_BROKER_URL": f"redis://127.0.0.1:{port}/0", "FTSERVE_QUEUE": queue},
        ) as stack:
            ds = stack.upload(content=train_csv, filename="train.csv").json()["id"]
            job_id = submit(stack, ds, "unlost", max_steps=4)
            client = redis.Redis(port=port)
            assert client.llen(queue) == 1  # the message is in the broker, and no worker is up yet
            server.kill()
            server.wait()
            server = start_redis()  # no persistence: the message is gone
            assert client.llen(queue) == 0
            assert stack.client.get(f"/jobs/{job_id}").json()["status"] == "queued"

            stack.start_worker()  # its reconciler re-sends what the database says is queued
            job = stack.wait_job(job_id, timeout=180)
            assert job["status"] == "succeeded", (job["error"], stack.logs("worker"))
            versions = stack.client.get("/models/unlost").json()["versions"]
            assert [v["version"] for v in versions] == [1]
            claims = [e for e in stack.events(job_id) if e["data"].get("status") == "running"]
            assert len(claims) == 1 and job["attempt"] == 1, claims  # never ran twice
            # The API's producer reconnected after the restart: a new job goes straight through.
            job = stack.wait_job(submit(stack, ds, "unlost", max_steps=2), timeout=180)
            assert job["status"] == "succeeded" and job["model"]["version"] == 2
    finally:
        server.kill()
        server.wait()


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_fifty_submissions_mixing_bad_specs_and_good_ones(pg_stack: Stack, train_csv: bytes) -> None:
    """Seeded and reproducible: every bad spec is rejected or fails naming what is wrong; good ones succeed."""
    import random

    ds = pg_stack.upload(content=train_csv, filename="train.csv").json()["id"]
    good = {"task": "classification", "base_model": TINY_BERT, "dataset": {"id": ds},
            "hyperparameters": {"max_steps": 2, "batch_size": 8}}
    hp = good["hyperparameters"]
    # (name, body, expected status, text the message must contain)
    bad_kinds: list[tuple[str, dict[str, Any], int, str]] = [
        ("unknown task", {**good, "task": "translation"}, 422, "translation"),
        ("unknown hyperparameter", {**good, "hyperparameters": {**hp, "learning_rte": 1e-3}}, 422, "learning_rte"),
        ("negative learning rate", {**good, "hyperparameters": {**hp, "learning_rate": -1}}, 422, "learning_rate"),
        ("string batch size", {**good, "hyperparameters": {**hp, "batch_size": "big"}}, 422, "batch_size"),
        ("zero max_steps", {**good, "hyperparameters": {**hp, "max_steps": 0}}, 422, "max_steps"),
        ("missing column", {**good, "columns": {"text": "body"}}, 422, "body"),
        ("unknown column field", {**good, "columns": {"sentence": "text"}}, 422, "sentence"),
        ("unknown dataset", {**good, "dataset": {"id": "ds_missing0"}}, 404, "ds_missing0"),
        ("no dataset", {k: v for k, v in good.items() if k != "dataset"}, 422, "dataset"),
        ("bad base model", {**good, "base_model": "not a model!"}, 422, "base_model"),
        ("escaping model name", {**good, "model_name": "../../etc"}, 422, "model_name"),
        ("unknown field", {**good, "epochs": 3}, 422, "epochs"),
        ("unloadable base model", {**good, "base_model": "nobody-org/nothing"}, 201, "nobody-org/nothing"),
        ("unknown hub dataset", {**good, "dataset": {"hub": "nobody-org/no-data"}}, 201, "nobody-org/no-data"),
    ]
    rng = random.Random(50)
    plan: list[tuple[str, dict[str, Any], int, str]] = [("good", good, 201, "")] * 4
    plan += [rng.choice(bad_kinds) for _ in range(46)]
    rng.shuffle(plan)
    assert {name for name, *_ in plan} >= {name for name, *_ in bad_kinds}, "every kind at least once"

    to_finish: list[tuple[str, str, str]] = []
    for i, (name, body, status, needle) in enumerate(plan):
        body = {**body, "model_name": body.get("model_name", f"fuzz-{i}")}
        r = pg_stack.client.post("/jobs", json=body)
        assert r.status_code == status, (name, r.text)
        if status == 201:
            to_finish.append((name, r.json()["id"], needle))
        else:
            error = r.json()["error"]
            assert needle in error["message"] or any(needle in json.dumps(d) for d in error["details"]), (name, error)
    for name, job_id, needle in to_finish:
        job = pg_stack.wait_job(job_id)
        if name == "good":
            assert job["status"] == "succeeded", job["error"]
        else:
            assert job["status"] == "failed" and job["error"]["type"] == "user", (name, job["error"])
            assert needle in job["error"]["message"], (name, job["error"])
    assert pg_stack.alive("worker")
    assert pg_stack.client.get("/healthz").status_code == 200


# Long enough for a normal 3-step job on a busy 2-core machine (torch import, tokenizing, saving).
MAX_JOB_SECONDS = 20


@pytest.fixture(scope="module")
def faulty_stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str) -> Iterator[Stack]:
    """Jobs named `slowpoke` hang before their first step; jobs named `crasher` SIGKILL their worker."""
    with fresh_pg_database() as url, Stack(
        data_dir=tmp_path_factory.mktemp("faulty"),
        env={**LIFECYCLE_ENV, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "FTSERVE_DATABASE_URL": url,
             "FTSERVE_BROKER_URL": redis_url, "FTSERVE_QUEUE": f"faulty_{free_port()}",
             "FTSERVE_MAX_JOB_SECONDS": str(MAX_JOB_SECONDS), "FTSERVE_MAX_ATTEMPTS": "2",
             "FTSERVE_FAILPOINTS": "before_train=hang@slowpoke,before_train=kill_worker@crasher"},
    ) as s:
        yield s


def _seconds(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_a_hung_run_is_stopped_at_the_maximum_duration(faulty_stack: Stack, train_csv: bytes) -> None:
    ds = faulty_stack.upload(content=train_csv, filename="train.csv").json()["id"]
    hung = submit(faulty_stack, ds, "slowpoke", max_steps=3)
    after = submit(faulty_stack, ds, "patient", max_steps=3)
    job = faulty_stack.wait_job(hung, timeout=120)
    assert job["status"] == "failed" and job["error"]["type"] == "user", job
    assert f"maximum duration of {MAX_JOB_SECONDS}s" in job["error"]["message"]
    assert MAX_JOB_SECONDS <= _seconds(job["started_at"], job["finished_at"]) < MAX_JOB_SECONDS + 30
    assert job["progress"] is None or not job["progress"].get("step")  # it never reached a step
    job = faulty_stack.wait_job(after, timeout=120)
    assert job["status"] == "succeeded", job["error"]  # the same worker took the next job
    assert faulty_stack.alive("worker")


def test_a_job_that_kills_its_worker_every_time_fails_after_max_attempts(faulty_stack: Stack,
                                                                         train_csv: bytes) -> None:
    ds = faulty_stack.upload(content=train_csv, filename="train.csv").json()["id"]
    job_id = submit(faulty_stack, ds, "crasher", max_steps=3)
    deaths = 0
    deadline = time.monotonic() + 240
    while (job := faulty_stack.client.get(f"/jobs/{job_id}").json())["status"] not in TERMINAL:
        if not faulty_stack.alive("worker"):
            deaths += 1
            faulty_stack.procs.pop("worker").wait()
            faulty_stack.start_worker()  # the operator's supervisor brings a worker back
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert deaths == 2
    assert job["status"] == "failed" and job["error"]["type"] == "system", job
    assert "lost 2 times" in job["error"]["message"] and "maximum attempts: 2" in job["error"]["message"]
    assert job["model"] is None
    # The replacement worker runs the next job.
    job = faulty_stack.wait_job(submit(faulty_stack, ds, "after-crashes", max_steps=3), timeout=120)
    assert job["status"] == "succeeded", job["error"]
