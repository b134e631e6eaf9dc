"""The Python SDK against real processes (uvicorn + a Celery worker on PostgreSQL and Redis, auth on): all four
tasks from upload to predict, `jobs.wait` on success and failure, a followed event stream across an API restart,
a retried create after a lost response, and a 429 retried after its Retry-After."""

from __future__ import annotations

import csv
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import ftserve
from tests.conftest import keyed_stack
from tests.e2e.test_classification import csv_slice
from tests.e2e.test_question_answering import jsonl_slice
from tests.stack import Stack
from tests.tiny_gpt2 import TINY_GPT2
from tests.tinymodels import TINY_BERT, TINY_T5

KEY = "sk-sdk-e2e-alice"
QUICK = {"max_steps": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str) -> Iterator[Stack]:
    with keyed_stack(tmp_path_factory.mktemp("sdk"), hf_home, redis_url, keys=f"alice:{KEY}",
                     FTSERVE_MAX_STREAMS_PER_KEY="1") as s:
        yield s


def sdk(stack: Stack, http: httpx.Client | None = None, **kw: Any) -> ftserve.Client:
    return ftserve.Client(stack.base_url, api_key=KEY, http_client=http, **kw)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_four_tasks_from_upload_to_predict(stack: Stack, shared_data: Path, tmp_path: Path) -> None:
    c = sdk(stack)
    corpus = (shared_data / "generation" / "train.txt").read_text(encoding="utf-8")[:6000]
    qa_rows = jsonl_slice(shared_data / "qa" / "train.jsonl", 32)
    summaries = (shared_data / "summarization" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:32]
    uploads = {
        "classification": write(tmp_path / "reviews.csv", csv_slice(shared_data / "classification" / "train.csv", 64)),
        "question-answering": write(tmp_path / "squad.jsonl", "".join(json.dumps(r) + "\n" for r in qa_rows).encode()),
        "summarization": write(tmp_path / "news.jsonl", ("\n".join(summaries) + "\n").encode()),
        "generation": write(tmp_path / "poems.txt", corpus[: corpus.rfind("\n\n")].encode()),
    }
    specs = {
        "classification": (TINY_BERT, QUICK),
        "question-answering": (TINY_BERT, {**QUICK, "max_length": 96, "doc_stride": 32, "max_answer_length": 20}),
        "summarization": (TINY_T5, {**QUICK, "max_length": 128, "max_target_length": 24}),
        "generation": (TINY_GPT2, {**QUICK, "block_size": 64}),
    }
    jobs = {}
    for task, path in uploads.items():
        ds = c.datasets.upload(path)
        assert ds.id in {d.id for d in c.datasets.list()} and ds.num_rows
        base, hp = specs[task]
        jobs[task] = c.jobs.create(task=task, base_model=base, dataset={"id": ds.id}, hyperparameters=hp,
                                   model_name=f"sdk-{task}")
        assert jobs[task].status == "queued"
    for task, job in jobs.items():
        done = c.jobs.wait(job.id, timeout=240)
        assert done.status == "succeeded", (task, done.error, stack.logs("worker"))
        assert done.model is not None and done.model.ref == f"sdk-{task}:1" and done.metrics
        assert c.models.get(f"sdk-{task}").latest_version == 1

    with uploads["classification"].open(newline="") as f:
        labels = {row["label"] for row in csv.DictReader(f)}
    classified = c.classify(["a wonderful film", "dull"], model="sdk-classification", top_k=None)
    assert classified.model == "sdk-classification:1" and len(classified.predictions) == 2
    assert {p.label for p in classified.predictions[0]} == labels
    assert abs(sum(p.score for p in classified.predictions[0]) - 1) < 1e-4

    context = qa_rows[0]["context"]
    answered = c.answer(qa_rows[0]["question"], context, model="sdk-question-answering")
    a = answered.answers[0]
    assert answered.model == "sdk-question-answering:1" and context[a.start:a.end] == a.answer

    summarized = c.summarize(json.loads(summaries[0])["document"], model="sdk-summarization", max_new_tokens=8)
    assert summarized.model == "sdk-summarization:1" and len(summarized.summaries) == 1

    generated = c.generate("Shall I compare", model="sdk-generation", max_new_tokens=12)
    chunks = list(c.generate("Shall I compare", model="sdk-generation", max_new_tokens=12, stream=True))
    assert chunks and "".join(chunks) == generated.generations[0].text  # greedy: the same text either way

    # The trained classifier out as an archive and back in under another name: the same answer.
    archive = c.models.export("sdk-classification", 1, tmp_path)
    assert archive.name == "sdk-classification-1.tar.gz" and archive.stat().st_size > 0
    imported = c.models.import_("sdk-copy", archive, task="classification")
    assert isinstance(imported, ftserve.types.ModelVersion) and imported.ref == "sdk-copy:1"
    copy = c.classify(["a wonderful film", "dull"], model="sdk-copy", top_k=None)
    assert [[p.label for p in row] for row in copy.predictions] == \
        [[p.label for p in row] for row in classified.predictions]
    c.models.delete("sdk-copy", 1)
    with pytest.raises(ftserve.NotFoundError):
        c.classify(["x"], model="sdk-copy:1")


def test_wait_returns_a_failed_job(stack: Stack) -> None:
    c = sdk(stack)
    job = c.jobs.create(task="classification", base_model=TINY_BERT, dataset={"hub": "nobody-org/no-data"},
                        hyperparameters=QUICK, model_name="sdk-doomed")
    done = c.jobs.wait(job.id, timeout=120)
    assert done.status == "failed" and done.error is not None and done.error.type == "user"
    assert "nobody-org/no-data" in done.error.message
    assert next(e for e in c.jobs.events(job.id) if e.terminal).data["status"] == "failed"


class DropFirstJobsResponse(httpx.BaseTransport):
    """The first `POST /jobs` reaches the server and is handled; its answer is then lost, as when a connection
    drops between the server's reply and the client."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seen: list[tuple[str, int]] = []  # (Idempotency-Key, status the server answered)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == "/jobs":
            response.read()
            self.seen.append((request.headers["idempotency-key"], response.status_code))
            if len(self.seen) == 1:
                response.close()
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_create_retried_after_a_lost_response_makes_one_job(stack: Stack) -> None:
    transport = DropFirstJobsResponse()
    c = sdk(stack, httpx.Client(transport=transport, timeout=60))
    job = c.jobs.create(task="classification", base_model=TINY_BERT, dataset={"hub": "nobody-org/no-data"},
                        hyperparameters=QUICK, model_name="sdk-once")
    (key1, first), (key2, second) = transport.seen
    assert key1 == key2 and (first, second) == (201, 200)  # made once, then answered as the same job
    assert [j.id for j in c.jobs.list() if j.model_name == "sdk-once"] == [job.id]
    c.jobs.wait(job.id, timeout=120)


class Recorder:
    """Event hooks: every request and response of a client, with when."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, httpx.Request]] = []
        self.responses: list[tuple[float, int]] = []

    def client(self) -> httpx.Client:
        return httpx.Client(timeout=60, event_hooks={
            "request": [lambda r: self.requests.append((time.monotonic(), r))],
            "response": [lambda r: self.responses.append((time.monotonic(), r.status_code))]})


def wait_until(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_follow_survives_an_api_restart_and_a_429_waits_for_retry_after(stack: Stack, shared_data: Path,
                                                                         tmp_path: Path) -> None:
    c = sdk(stack, max_retries=8)
    ds = c.datasets.upload(write(tmp_path / "r.csv", csv_slice(shared_data / "classification" / "train.csv", 64)))
    job = c.jobs.create(task="classification", base_model=TINY_BERT, dataset=ds, model_name="sdk-long",
                        hyperparameters={"max_steps": 100_000, "batch_size": 8, "logging_steps": 5,
                                         "eval_steps": 100_000})
    follower = Recorder()
    followed: list[ftserve.types.JobEvent] = []
    late = Recorder()  # a second follower, over the one-stream-per-key limit
    late_events: list[ftserve.types.JobEvent] = []
    late_thread = threading.Thread(target=lambda: late_events.extend(
        sdk(stack, late.client(), max_retries=3).jobs.events(job.id, follow=True)))
    restarted_after: int | None = None
    for event in sdk(stack, follower.client(), max_retries=8).jobs.events(job.id, follow=True):
        followed.append(event)
        if restarted_after is None and len(followed) == 3:
            restarted_after = event.id
            stack.stop("api", signal.SIGKILL)  # the server side of the stream is gone at once
            stack.start_api()
        elif restarted_after is not None and event.id == restarted_after + 3 and not late_thread.is_alive():
            late_thread.start()
            wait_until("the second stream's 429", lambda: late.responses and late.responses[0][1] == 429)
            assert c.jobs.cancel(job.id).status in ("cancelling", "cancelled")
    late_thread.join(timeout=120)

    ids = [e.id for e in followed]
    assert ids == list(range(1, len(ids) + 1)), ids  # no gap, no duplicate across the restart
    assert followed[-1].terminal and followed[-1].data["status"] == "cancelled"
    assert followed == c.jobs.events(job.id)
    resumed = [r.headers.get("last-event-id") for _, r in follower.requests if r.url.path.endswith("/events")]
    # The stream may have carried events past the kill point in the chunk already read: the client resumes after
    # the last event it parsed, which is never before the one the test was handed at the kill.
    assert resumed[0] is None and len(resumed) > 1, resumed
    assert all(r is not None and int(r) >= restarted_after for r in resumed[1:]), resumed

    # The second follower was told to wait (Retry-After: 5) while the first held the key's one stream, came back
    # no sooner, and once the first had ended read the whole log.
    statuses = [s for _, s in late.responses]
    assert statuses[0] == 429 and statuses[-1] == 200 and set(statuses[:-1]) == {429}, statuses
    for (refused_at, _), (retried_at, _) in zip(late.responses, late.requests[1:], strict=False):
        assert retried_at - refused_at >= 5 - 0.05, retried_at - refused_at
    assert late_events == followed
