"""Owners and long connections with real processes: uvicorn, a Celery worker, PostgreSQL and Redis, three keys
(alice, bob, and root, an admin). Route-by-route owner checks run in process (tests/api/test_tenancy.py); here
trained models are served (or not) to each key, the worker keeps a name another owner took meanwhile, a hub
name that is also a directory beside the worker reaches only the hub cache, and streams are bounded."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import fresh_pg_database
from tests.e2e.test_classification import csv_slice
from tests.stack import Stack, free_port
from tests.tiny_gpt2 import TINY_GPT2
from tests.tinymodels import TINY_BERT

KEYS = {"alice": "key-alice", "bob": "key-bob", "root": "key-root"}
STREAMS_PER_KEY = 6
QUEUE = 4


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str) -> Iterator[Stack]:
    with fresh_pg_database() as url, Stack(
        data_dir=tmp_path_factory.mktemp("tenancy"),
        env={"FTSERVE_DATABASE_URL": url, "FTSERVE_BROKER_URL": redis_url, "FTSERVE_QUEUE": f"tenancy_{free_port()}",
             "FTSERVE_API_KEYS": ",".join(f"{n}:{k}" for n, k in KEYS.items()), "FTSERVE_ADMIN_KEYS": "root",
             "FTSERVE_MAX_STREAMS_PER_KEY": str(STREAMS_PER_KEY), "FTSERVE_MAX_STREAMS_PER_MODEL": "1",
             "FTSERVE_MAX_QUEUE_ITEMS": str(QUEUE), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
             # One 240-token generation at a time in the decode loop: the next ones wait in its queue.
             "FTSERVE_MAX_GENERATION_TOKENS": "300"},
    ) as s:
        s.metrics_headers = auth("root")
        yield s


def post(stack: Stack, who: str, path: str, **kw: Any) -> httpx.Response:
    return stack.client.post(path, headers={**auth(who), **kw.pop("headers", {})}, **kw)


def get(stack: Stack, who: str, path: str, **kw: Any) -> httpx.Response:
    return stack.client.get(path, headers={**auth(who), **kw.pop("headers", {})}, **kw)


def submit(stack: Stack, who: str, dataset_id: str, model_name: str, **over: Any) -> httpx.Response:
    body = {"task": "classification", "base_model": TINY_BERT, "dataset": {"id": dataset_id},
            "model_name": model_name, "hyperparameters": {"max_steps": 2, "batch_size": 8}, **over}
    return post(stack, who, "/jobs", json=body)


def wait(stack: Stack, who: str, job_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = get(stack, who, f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"{job_id} still {job['status']}\n{stack.logs('worker')}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def trained(stack: Stack, shared_data: Path) -> dict[str, str]:
    """alice's classifier and generator, and a job of bob's that wants a name alice takes while it waits."""
    csv = csv_slice(shared_data / "classification" / "train.csv", 120)
    ds_alice = stack.upload(content=csv, filename="a.csv", headers=auth("alice")).json()["id"]
    ds_bob = stack.upload(content=csv, filename="b.csv", headers=auth("bob")).json()["id"]
    corpus = (shared_data / "generation" / "train.txt").read_text(encoding="utf-8")[:6000].encode()
    txt = stack.upload(content=corpus, filename="c.txt", headers=auth("alice")).json()["id"]
    jobs = {
        "sent": submit(stack, "alice", ds_alice, "alice-sent"),
        "contested-alice": submit(stack, "alice", ds_alice, "contested"),
        "contested-bob": submit(stack, "bob", ds_bob, "contested"),  # accepted: the name is free at submit
        "gen": post(stack, "alice", "/jobs", json={
            "task": "generation", "base_model": TINY_GPT2, "dataset": {"id": txt}, "model_name": "alice-gen",
            "hyperparameters": {"max_steps": 1, "batch_size": 2, "block_size": 32}}),
        # `tests/e2e` is a clean org/name and a directory beside the worker: it must reach only the hub cache.
        "local-dir": submit(stack, "bob", ds_bob, "local-dir", dataset={"hub": "tests/e2e"}),
        "local-model": submit(stack, "bob", ds_bob, "local-model", base_model="tests/e2e"),
    }
    for name, r in jobs.items():
        assert r.status_code == 201, (name, r.text)
    owners = {"sent": "alice", "contested-alice": "alice", "gen": "alice"}
    return {name: r.json()["id"] for name, r in jobs.items()} | {
        f"{name}-status": wait(stack, owners.get(name, "bob"), r.json()["id"])["status"] for name, r in jobs.items()}


def test_models_are_served_to_their_owner_shared_ones_to_all(stack: Stack, trained: dict[str, str]) -> None:
    assert trained["sent-status"] == "succeeded" and trained["gen-status"] == "succeeded"
    body = {"model": "alice-sent", "inputs": ["a fine film", "dull"], "top_k": None}
    mine = post(stack, "alice", "/classify", json=body)
    assert mine.status_code == 200 and mine.json()["model"] == "alice-sent:1"
    assert post(stack, "bob", "/classify", json=body).status_code == 404
    r = post(stack, "bob", "/classify", json={"inputs": ["x"]})  # bob has no classifier of his own
    assert r.status_code == 404 and "no classification model" in r.json()["error"]["message"]
    assert post(stack, "bob", "/generate", json={"model": "alice-gen", "prompt": "x", "stream": True}
                ).status_code == 404
    assert stack.client.put("/models/alice-sent", json={"visibility": "shared"}, headers=auth("alice")
                            ).status_code == 200
    theirs = post(stack, "bob", "/classify", json=body)
    assert theirs.status_code == 200 and theirs.json() == mine.json()
    assert post(stack, "root", "/classify", json=body).json() == mine.json()
    # Still his own classifiers only, with no model named.
    assert post(stack, "bob", "/classify", json={"inputs": ["x"]}).status_code == 404
    stack.client.put("/models/alice-sent", json={"visibility": "private"}, headers=auth("alice"))
    assert post(stack, "bob", "/classify", json=body).status_code == 404


def test_a_prompt_past_the_models_context_is_422(stack: Stack, trained: dict[str, str]) -> None:
    """The tiny GPT-2 has 256 positions: generating past them indexes beyond its position table (an IndexError
    on the CPU, a device assert on a GPU)."""
    prompt = "ROMEO: what light through yonder window breaks? " * 8
    for stream in (False, True):
        r = post(stack, "alice", "/generate", json={"model": "alice-gen", "prompt": prompt, "max_new_tokens": 200,
                                                    "stream": stream})
        assert r.status_code == 422, r.text
        message = r.json()["error"]["message"]
        assert "max_new_tokens is 200" in message and "context of 256 tokens" in message, message
    # In one request with a prompt that fits, the request fails; alone, that prompt is answered.
    r = post(stack, "alice", "/generate", json={"model": "alice-gen", "inputs": ["ROMEO:", prompt],
                                                "max_new_tokens": 200})
    assert r.status_code == 422
    r = post(stack, "alice", "/generate", json={"model": "alice-gen", "prompt": "ROMEO:", "max_new_tokens": 200})
    assert r.status_code == 200 and r.json()["generations"][0]["tokens"] > 0


def test_a_name_taken_while_a_job_waited_fails_that_job(stack: Stack, trained: dict[str, str]) -> None:
    assert trained["contested-alice-status"] == "succeeded"
    job = get(stack, "bob", f"/jobs/{trained['contested-bob']}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "user", job
    assert "taken by another owner" in job["error"]["message"]
    model = get(stack, "alice", "/models/contested").json()
    assert model["owner"] == "alice" and [v["version"] for v in model["versions"]] == [1]
    r = submit(stack, "bob", "ds_unused", "contested")
    assert r.status_code == 409 and "taken" in r.json()["error"]["message"]


def test_hub_names_never_read_a_local_directory(stack: Stack, trained: dict[str, str]) -> None:
    for name in ("local-dir", "local-model"):
        job = get(stack, "bob", f"/jobs/{trained[name]}").json()
        assert job["status"] == "failed" and job["error"]["type"] == "user", job
        message = job["error"]["message"]
        assert "tests/e2e" in message and "cache" in message, message
        assert "test_" not in message and str(stack.data_dir) not in message, message


def test_the_admin_sees_every_owner(stack: Stack, trained: dict[str, str]) -> None:
    listed = {j["id"] for j in get(stack, "root", "/jobs", params={"limit": 100}).json()["data"]}
    assert {trained["sent"], trained["contested-bob"]} <= listed
    assert trained["sent"] not in {j["id"] for j in get(stack, "bob", "/jobs", params={"limit": 100}).json()["data"]}


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_streams_are_bounded(stack: Stack, trained: dict[str, str], shared_data: Path) -> None:
    """Unread streamed generations wait in the model's queue (429 when it is full) and hold no thread each;
    event streams and generations share the per-key cap."""
    api_pid = stack.procs["api"].pid
    long = {"model": "alice-gen", "prompt": "ROMEO:", "max_new_tokens": 240, "min_new_tokens": 240, "stream": True}
    rejected0 = stack.metric("ftserve_requests_rejected_total", model="alice-gen:1", reason="queue_full")
    before = threads_of(api_pid)
    with contextlib.ExitStack() as open_streams:
        client = open_streams.enter_context(httpx.Client(base_url=stack.base_url, timeout=60, headers=auth("alice")))
        statuses = []
        for _ in range(QUEUE + 2):  # one runs, QUEUE wait, the last finds the queue full
            response = open_streams.enter_context(client.stream("POST", "/generate", json=long))
            statuses.append(response.status_code)  # and never read
        assert statuses == [200] * (QUEUE + 1) + [429], statuses
        assert stack.metric("ftserve_requests_rejected_total", model="alice-gen:1", reason="queue_full") \
            == rejected0 + 1
        # One decode thread for the model; nothing per waiting stream (a thread each, two before).
        assert threads_of(api_pid) - before <= 4, (before, threads_of(api_pid))
        t0 = time.perf_counter()
        assert get(stack, "alice", "/jobs").status_code == 200
        assert time.perf_counter() - t0 < 2.0

    # Per key: event streams of a job that stays open fill alice's allowance; a generation is then refused too.
    csv = csv_slice(shared_data / "classification" / "train.csv", 200)
    ds = stack.upload(content=csv, filename="open.csv", headers=auth("alice")).json()["id"]
    job_id = submit(stack, "alice", ds, "kept-open", hyperparameters={"max_steps": 100000}).json()["id"]
    sse = {"Accept": "text/event-stream"}
    with contextlib.ExitStack() as open_streams:
        client = open_streams.enter_context(httpx.Client(base_url=stack.base_url, timeout=60, headers=auth("alice")))
        follows = [open_streams.enter_context(client.stream("GET", f"/jobs/{job_id}/events", headers=sse))
                   for _ in range(STREAMS_PER_KEY)]
        assert [f.status_code for f in follows] == [200] * STREAMS_PER_KEY
        for refused in (client.get(f"/jobs/{job_id}/events", headers=sse),
                        client.post("/generate", json={**long, "max_new_tokens": 4, "min_new_tokens": 4})):
            assert refused.status_code == 429 and "streams are already open" in refused.json()["error"]["message"]
            assert int(refused.headers["Retry-After"]) > 0
        # Another key has its own allowance.
        bob = get(stack, "bob", f"/jobs/{trained['contested-bob']}/events", headers=sse)
        assert bob.status_code == 200 and "event: status" in bob.text
    assert post(stack, "alice", f"/jobs/{job_id}/cancel").status_code == 200
    # Closed: the slots come back.
    deadline = time.monotonic() + 30
    while stack.metric("ftserve_open_streams") > 0:
        assert time.monotonic() < deadline, "streams still counted as open"
        time.sleep(0.2)
    r = post(stack, "alice", "/generate", json={**long, "max_new_tokens": 4, "min_new_tokens": 4})
    assert r.status_code == 200 and "event: done" in r.text
    assert stack.metric("ftserve_requests_total", endpoint="/generate", model="alice-gen:1", status="200") >= 1
    assert wait(stack, "alice", job_id)["status"] == "cancelled"


def test_followers_of_a_job_share_one_poller(stack: Stack, trained: dict[str, str], shared_data: Path) -> None:
    csv = csv_slice(shared_data / "classification" / "train.csv", 200)
    ds = stack.upload(content=csv, filename="long.csv", headers=auth("bob")).json()["id"]
    job_id = submit(stack, "bob", ds, "long-run", hyperparameters={"max_steps": 40, "batch_size": 8,
                                                                   "logging_steps": 2}).json()["id"]
    sse = {"Accept": "text/event-stream", **auth("bob")}
    with contextlib.ExitStack() as open_streams:
        client = open_streams.enter_context(httpx.Client(base_url=stack.base_url, timeout=120))
        followers = [open_streams.enter_context(client.stream("GET", f"/jobs/{job_id}/events", headers=sse))
                     for _ in range(3)]
        assert all(f.status_code == 200 for f in followers)
        deadline = time.monotonic() + 30
        while stack.metric("ftserve_event_pollers") != 1:
            assert time.monotonic() < deadline, stack.metric("ftserve_event_pollers")
            time.sleep(0.1)
        seen = []
        for follower in followers:  # each gets the whole log, in order, up to the terminal status
            ids = [int(line[4:]) for line in follower.iter_lines() if line.startswith("id: ")]
            seen.append(ids)
        assert seen[0] == seen[1] == seen[2] and seen[0] == list(range(1, len(seen[0]) + 1)), seen
    assert wait(stack, "bob", job_id)["status"] == "succeeded"
