"""The client's retry, reconnect and error logic against a fake transport (httpx.MockTransport): what is retried,
after how long, with which headers; no server here."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import ftserve
from ftserve.errors import BY_TYPE, STATUS_OF_TYPE, make_error

Handler = Callable[[httpx.Request], httpx.Response]
JOB = {"id": "job_1", "status": "queued", "task": "classification"}


class Fake:
    """A scripted server: each call pops the next answer (a response, or an exception to raise)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr("ftserve._client.time.sleep", slept.append)
    return slept


def client(fake: Handler, **kw: Any) -> ftserve.Client:
    return ftserve.Client("http://ft.test", http_client=httpx.Client(transport=httpx.MockTransport(fake)), **kw)


def error(status: int, type_: str, message: str = "no", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": type_, "message": message, "details": []}},
                          headers=headers)


def dropped() -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError("Server disconnected without sending a response.")


def test_a_get_is_retried_after_connection_errors_then_gives_up(sleeps: list[float]) -> None:
    fake = Fake(httpx.ConnectError("refused"), dropped(), httpx.Response(200, json=JOB))
    assert client(fake).jobs.get("job_1").status == "queued"
    assert len(fake.requests) == 3 and len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # backoff with jitter

    fake = Fake(*[httpx.ConnectError("refused")] * 4)
    with pytest.raises(ftserve.APIConnectionError, match="ConnectError"):
        client(fake, max_retries=3).jobs.get("job_1")
    assert len(fake.requests) == 4  # the first try and max_retries more


def test_an_upload_is_not_repeated_after_a_connection_error(sleeps: list[float], tmp_path: Any) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,b\n")
    fake = Fake(dropped())
    with pytest.raises(ftserve.APIConnectionError):
        client(fake).datasets.upload(path)
    assert len(fake.requests) == 1 and sleeps == []


def test_an_upload_is_resent_whole_after_a_429(sleeps: list[float], tmp_path: Any) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,b\n")
    bodies: list[bytes] = []

    def ok(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return httpx.Response(201, json={"id": "ds_1", "name": "d.csv", "columns": ["text", "label"]})

    def busy(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return error(429, "rate_limited", headers={"Retry-After": "2"})

    ds = client(Fake(busy, ok)).datasets.upload(path, name="mine")
    assert ds.id == "ds_1" and ds.columns == ["text", "label"]
    assert sleeps == [2.0]
    for body in bodies:  # the whole file both times (each request has its own multipart boundary)
        assert b"text,label\na,b\n" in body and b'name="name"' in body


def test_jobs_create_is_retried_with_the_same_idempotency_key(sleeps: list[float]) -> None:
    fake = Fake(dropped(), httpx.ReadTimeout("slow"), httpx.Response(200, json=JOB))
    job = client(fake).jobs.create(task="classification", base_model="b", dataset="ds_1",
                                   hyperparameters={"max_steps": 2})
    assert job.id == "job_1"
    keys = [r.headers["idempotency-key"] for r in fake.requests]
    assert len(keys) == 3 and len(set(keys)) == 1 and len(keys[0]) == 36  # one uuid4 for every attempt
    assert json.loads(fake.requests[0].content)["dataset"] == {"id": "ds_1"}
    # A new create is a new key; a given key is sent as it is.
    again = Fake(httpx.Response(201, json=JOB), httpx.Response(201, json=JOB))
    c = client(again)
    c.jobs.create(task="classification")
    c.jobs.create(task="classification", idempotency_key="mine")
    assert again.requests[0].headers["idempotency-key"] not in (keys[0], "mine")
    assert again.requests[1].headers["idempotency-key"] == "mine"


def test_429_and_503_are_retried_for_every_request_after_retry_after(sleeps: list[float]) -> None:
    fake = Fake(error(429, "rate_limited", headers={"Retry-After": "3"}),
                error(503, "not_ready", headers={"Retry-After": "1"}),
                error(503, "not_ready"),  # no Retry-After: backoff
                httpx.Response(200, json={"id": "push_1", "status": "queued"}))
    push = client(fake, max_retries=3).models.push("m", 1, repo_id="org/m")  # a POST that is not safe otherwise
    assert push.id == "push_1" and len(fake.requests) == 4
    assert sleeps[:2] == [3.0, 1.0] and 1.0 <= sleeps[2] <= 2.0


def test_a_429_past_the_retries_or_asking_too_long_a_wait_is_raised(sleeps: list[float]) -> None:
    fake = Fake(*[error(429, "rate_limited", "full", headers={"Retry-After": "1"})] * 3)
    with pytest.raises(ftserve.RateLimitError) as info:
        client(fake).classify(["x"])
    assert info.value.status == 429 and info.value.type == "rate_limited" and info.value.message == "full"
    assert info.value.retry_after == 1.0 and sleeps == [1.0, 1.0]

    sleeps.clear()
    fake = Fake(error(429, "rate_limited", headers={"Retry-After": "3600"}))
    with pytest.raises(ftserve.RateLimitError):
        client(fake).classify(["x"])
    assert sleeps == [] and len(fake.requests) == 1


def test_other_errors_are_not_retried_and_map_to_one_class_per_type(sleeps: list[float]) -> None:
    for type_, cls in BY_TYPE.items():
        status = STATUS_OF_TYPE[type_]
        if status in (429, 503):
            continue
        fake = Fake(error(status, type_, f"{type_} said"))
        with pytest.raises(cls) as info:
            client(fake).datasets.get("ds_1")
        assert isinstance(info.value, ftserve.APIError)
        assert (info.value.status, info.value.type, info.value.message) == (status, type_, f"{type_} said")
        assert len(fake.requests) == 1
    assert sleeps == []
    # Without the error shape (a proxy's page): by status.
    e = make_error(status=502, body="<html>bad gateway</html>")
    assert isinstance(e, ftserve.InternalServerError) and e.status == 502 and "bad gateway" in e.message
    assert type(make_error(status=418, body={"error": {"type": "teapot", "message": "m"}})) is ftserve.APIError


def sse(*events: tuple[int, str, dict[str, Any]]) -> bytes:
    return b"".join(f"id: {i}\nevent: {t}\ndata: {json.dumps({'id': i, 'type': t, 'data': d})}\n\n".encode()
                    for i, t, d in events)


class Cut(httpx.SyncByteStream):
    """A body that sends `data` and then breaks, as a server that went away mid-stream."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Any:
        yield self.data
        raise httpx.ReadError("connection reset by peer")


def test_follow_reconnects_with_last_event_id_without_gap_or_duplicate(sleeps: list[float]) -> None:
    first = sse((1, "status", {"status": "queued"}), (2, "status", {"status": "running"}), (3, "metrics", {}))

    def cut(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=Cut(first + b": keepalive\n\nid: 4\nevent: met"))

    def rest(request: httpx.Request) -> httpx.Response:
        # The server resends from what it is told (an event the client has seen too, to check it is dropped).
        after = int(request.headers["last-event-id"])
        events = [(i, "metrics", {}) for i in range(after, 6)] + [(6, "status", {"status": "succeeded"})]
        return httpx.Response(200, content=sse(*events), headers={"content-type": "text/event-stream"})

    fake = Fake(cut, httpx.ConnectError("refused"), rest)
    events = list(client(fake).jobs.events("job_1", follow=True))
    assert [e.id for e in events] == [1, 2, 3, 4, 5, 6] and events[-1].terminal
    assert [r.headers.get("last-event-id") for r in fake.requests] == [None, "3", "3"]
    assert all(r.headers["accept"] == "text/event-stream" for r in fake.requests)


def test_follow_ends_when_a_stream_closes_on_a_finished_job_and_gives_up_after_retries(sleeps: list[float]) -> None:
    # Resumed after the terminal event: nothing to send, and the job is over.
    fake = Fake(httpx.Response(200, content=b"", headers={"content-type": "text/event-stream"}),
                httpx.Response(200, json={**JOB, "status": "failed"}))
    assert list(client(fake).jobs.events("job_1", follow=True, after=9)) == []
    assert fake.requests[0].headers["last-event-id"] == "9"

    fake = Fake(*[httpx.ConnectError("refused")] * 20)
    with pytest.raises(ftserve.APIConnectionError, match="job_1"):
        list(client(fake, max_retries=1).jobs.events("job_1", follow=True))


def test_follow_raises_an_error_event_and_not_found() -> None:
    fake = Fake(error(404, "not_found", "job 'job_x' not found"))
    with pytest.raises(ftserve.NotFoundError, match="job_x"):
        list(client(fake).jobs.events("job_x", follow=True))


def test_events_so_far_read_every_page() -> None:
    def page(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params.get("after", 0))
        ids = [i for i in range(after + 1, min(after + 3, 6))]
        return httpx.Response(200, json={"data": [{"id": i, "type": "log", "data": {}} for i in ids],
                                         "has_more": ids[-1] < 5})

    fake = Fake(page, page, page)
    assert [e.id for e in client(fake).jobs.events("job_1")] == [1, 2, 3, 4, 5]
    assert [r.url.params.get("after") for r in fake.requests] == [None, "2", "4"]


def test_generate_stream_yields_chunks_and_raises_an_error_event() -> None:
    body = (b'event: token\ndata: {"text": "Hel"}\n\nevent: token\ndata: {"text": "lo"}\n\n'
            b'event: done\ndata: {"text": "Hello", "finish_reason": "length", "tokens": 2}\n\n')
    fake = Fake(httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    assert list(client(fake).generate("Say", model="bard", stream=True, max_new_tokens=2)) == ["Hel", "lo"]
    assert json.loads(fake.requests[0].content) == {"prompt": "Say", "model": "bard", "max_new_tokens": 2,
                                                     "stream": True}
    bad = (b'event: token\ndata: {"text": "a"}\n\n'
           b'event: error\ndata: {"error": {"type": "timeout", "message": "late"}}\n\n')
    fake = Fake(httpx.Response(200, content=bad, headers={"content-type": "text/event-stream"}))
    chunks: list[str] = []
    with pytest.raises(ftserve.DeadlineExceededError, match="late"):
        chunks.extend(client(fake).generate("Say", stream=True))
    assert chunks == ["a"]


def test_the_api_key_is_sent_but_never_shown(caplog: pytest.LogCaptureFixture, sleeps: list[float],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-very-secret-123"
    fake = Fake(httpx.ConnectError("refused"), error(401, "unauthorized", "wrong key"))
    c = client(fake, api_key=secret)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ftserve.AuthenticationError) as info:
        c.models.get("m")
    assert fake.requests[0].headers["authorization"] == f"Bearer {secret}"
    shown = [repr(c), str(info.value), repr(info.value), repr(info.value.__dict__), caplog.text,
             repr(c._core.options), repr(fake.requests[0].headers)]
    assert not any(secret in s for s in shown), shown

    monkeypatch.setenv("FTSERVE_URL", "http://env.test:9/")
    monkeypatch.setenv("FTSERVE_API_KEY", "k-env")
    env = ftserve.Client()
    assert env.base_url == "http://env.test:9" and env._core.headers()["Authorization"] == "Bearer k-env"
    monkeypatch.delenv("FTSERVE_URL")
    monkeypatch.delenv("FTSERVE_API_KEY")
    plain = ftserve.Client()
    assert plain.base_url == "http://127.0.0.1:8000" and "Authorization" not in plain._core.headers()


def test_async_client_retries_follows_and_pages_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("ftserve._client.asyncio.sleep", no_sleep)
    fake = Fake(dropped(), httpx.Response(201, json=JOB),
                error(429, "rate_limited", headers={"Retry-After": "2"}),
                httpx.Response(200, json={"data": [{"id": "job_2", "status": "queued"}], "has_more": True}),
                httpx.Response(200, json={"data": [{"id": "job_1", "status": "queued"}], "has_more": False}),
                httpx.Response(200, content=sse((1, "status", {"status": "cancelled"})),
                               headers={"content-type": "text/event-stream"}))

    async def main() -> None:
        async with ftserve.AsyncClient("http://ft.test", http_client=httpx.AsyncClient(
                transport=httpx.MockTransport(fake))) as c:
            job = await c.jobs.create(task="classification")
            assert job.id == "job_1"
            assert [j.id async for j in c.jobs.list(limit=1)] == ["job_2", "job_1"]
            assert [e.id async for e in c.jobs.events("job_1", follow=True)] == [1]
            with pytest.raises(ftserve.NotFoundError):
                fake.answers.append(error(404, "not_found"))
                await c.datasets.get("ds_x")

    asyncio.run(main())
    assert fake.requests[0].headers["idempotency-key"] == fake.requests[1].headers["idempotency-key"]
    assert fake.requests[4].url.params["after"] == "job_2" and slept[1] == 2.0


def test_model_files_card_push_and_import_requests(tmp_path: Any, sleeps: list[float]) -> None:
    archive = b"\x1f\x8b fake tar.gz bytes" * 1000
    version = {"name": "m2", "version": 1, "ref": "m2:1", "task": "classification"}

    def cut(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Cut(archive[:100]))

    fake = Fake(httpx.Response(200, text="---\nlicense: mit\n---\n# m", headers={"content-type": "text/markdown"}),
                cut, httpx.Response(200, content=archive), httpx.Response(201, json=version),
                httpx.Response(202, json={**JOB, "kind": "import"}),
                httpx.Response(202, json={"id": "push_1", "status": "queued", "repo_id": "org/m", "url": None}),
                httpx.Response(204), httpx.Response(204))
    c = client(fake)
    assert c.models.card("m", 1).startswith("---\nlicense: mit")
    path = c.models.export("m", 1, tmp_path)  # the first download drops half-way: fetched again, whole
    assert path == tmp_path / "m-1.tar.gz" and path.read_bytes() == archive
    assert list(tmp_path.iterdir()) == [path]  # no .part left behind
    imported = c.models.import_("m2", path, task="classification")
    assert isinstance(imported, ftserve.types.ModelVersion) and imported.ref == "m2:1"
    hub = c.models.import_("m3", hub="org/qa-model", revision="main")
    assert isinstance(hub, ftserve.types.Job) and hub.kind == "import"
    push = c.models.push("m", 1, repo_id="org/m", private=True, token="hf_secret")
    assert push.id == "push_1" and push.status == "queued"
    assert c.models.delete("m", 2) is None and c.models.delete("m", force=True) is None

    card, export, _, upload, hub_req, push_req, del_version, del_model = fake.requests
    assert card.url.path == "/models/m/versions/1/card" and card.headers["accept"] == "text/markdown"
    assert export.url.path == "/models/m/versions/1/archive"
    assert upload.url.path == "/models/m2/versions" and b'name="task"' in upload.read()
    assert upload.headers["content-type"].startswith("multipart/form-data")
    assert json.loads(hub_req.content) == {"hub": "org/qa-model", "revision": "main"}
    assert json.loads(push_req.content) == {"repo_id": "org/m", "private": True, "token": "hf_secret"}
    assert push_req.url.path == "/models/m/versions/1/push"
    assert (del_version.method, del_version.url.path) == ("DELETE", "/models/m/versions/2")
    assert del_model.url.path == "/models/m" and del_model.url.params["force"] == "true"
    # Names are one path segment each, whatever they hold.
    fake = Fake(httpx.Response(200, json={"name": "a/b", "task": "generation"}))
    client(fake).models.get("a/../b")
    assert fake.requests[0].url.raw_path == b"/models/a%2F..%2Fb"


def test_a_delete_whose_answer_was_lost_is_done_when_the_retry_finds_nothing(sleeps: list[float]) -> None:
    fake = Fake(dropped(), error(404, "not_found", "dataset 'ds_1' not found"))
    assert client(fake).datasets.delete("ds_1") is None
    assert [r.method for r in fake.requests] == ["DELETE", "DELETE"]
    # Without a lost answer, a 404 is the caller's error.
    with pytest.raises(ftserve.NotFoundError):
        client(Fake(error(404, "not_found", "dataset 'ds_2' not found"))).datasets.delete("ds_2")
