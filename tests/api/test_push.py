"""Push routes in process: `POST /models/{name}/versions/{v}/push` validates and queues (no worker here: the
message is captured), `GET …/pushes` and `…/pushes/{id}` read the records; the owner rules (another owner's
private model 404, a shared one 403, an admin may), the token rules (kept in the row's secret only; without one,
the server's token within its namespaces), and a job's `push` field."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from registry.db import session_scope
from registry.models import Job, JobEvent, ModelVersion, RegisteredModel
from registry.models import utcnow as now
from tests.api.test_bounded_input import GOOD_CSV, err, healthy, job_body
from tests.api.test_tenancy import ENV, As, register

TOKEN = "hf_userTOKEN0123456789abcdef"
SERVER_TOKEN = "hf_serverTOKEN0123456789abcdef"
PUSH = "/models/sent/versions/1/push"
PUSHES = "/models/sent/versions/1/pushes"
FIELDS = {"id", "status", "repo_id", "revision", "private", "commit_message", "url", "commit", "error",
          "created_at", "finished_at", "model"}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What was sent to the broker: the arguments of every `send_job` call."""
    calls: list[Any] = []
    monkeypatch.setattr("api.routes.jobs.send_job", lambda *a, **kw: calls.append((a, kw)))
    return calls


@pytest.fixture
def make(make_api: Callable[..., TestClient], sent: list[Any]) -> Callable[..., TestClient]:
    def start(**env: str) -> TestClient:
        api = make_api(**ENV, **env)
        with session_scope() as s:
            known = s.get(RegisteredModel, "sent") is not None  # a second app on the same data dir
        if not known:
            register("sent", owner="alice")
        return api

    return start


def _row(push_id: str) -> tuple[Job, list[JobEvent]]:
    with session_scope() as s:
        job = s.get(Job, push_id)
        assert job is not None
        events = list(s.query(JobEvent).filter(JobEvent.job_id == push_id))
        s.expunge_all()
        return job, events


def test_a_push_is_queued_with_its_token_in_the_row_only(make: Callable[..., TestClient], sent: list[Any]) -> None:
    api = make()
    alice = As(api, "alice")
    r = alice.post(PUSH, json={"repo_id": "org/sent", "commit_message": "first push", "token": TOKEN})
    assert r.status_code == 202, r.text
    push = r.json()
    assert set(push) == FIELDS
    assert push["id"].startswith("push_") and push["status"] == "queued"
    assert (push["repo_id"], push["revision"], push["private"]) == ("org/sent", "main", True)
    assert (push["url"], push["commit"], push["error"], push["finished_at"]) == (None, None, None, None)
    assert push["model"] == {"name": "sent", "version": 1, "ref": "sent:1"}
    assert push["commit_message"] == "first push"

    job, events = _row(push["id"])
    assert (job.kind, job.owner, job.model_name, job.model_version, job.secret) == ("push", "alice", "sent", 1,
                                                                                   TOKEN)
    assert TOKEN not in json.dumps(job.spec) and job.spec["auth"] == "request"
    assert sent == [((push["id"],), {})]  # the message carries the job id, nothing else
    shown = [r.text, alice.get(f"{PUSHES}/{push['id']}").text, alice.get(PUSHES).text,
             alice.get(f"/jobs/{push['id']}").text, alice.get(f"/jobs/{push['id']}/events").text,
             alice.get("/jobs", params={"kind": "push"}).text, json.dumps([(e.message, e.data) for e in events])]
    assert all(TOKEN not in text for text in shown)
    assert alice.get(PUSHES).json() == {"data": [push], "has_more": False}
    assert alice.get(f"{PUSHES}/{push['id']}").json() == push

    # The default commit message names the version; private is the default, public when asked.
    r = alice.post(PUSH, json={"repo_id": "org/sent", "private": False, "revision": "exp/v2", "token": TOKEN})
    assert r.status_code == 202 and r.json()["private"] is False and r.json()["revision"] == "exp/v2"
    assert r.json()["commit_message"] == "Upload sent:1 from ftserve"
    listed = alice.get(PUSHES, params={"limit": 1}).json()
    assert [p["id"] for p in listed["data"]] == [r.json()["id"]] and listed["has_more"] is True
    older = alice.get(PUSHES, params={"after": r.json()["id"]}).json()
    assert [p["id"] for p in older["data"]] == [push["id"]] and older["has_more"] is False
    healthy(api)


@pytest.mark.parametrize(("body", "says"), [
    ({"repo_id": "org/sent", "token": TOKEN, "force": True}, "unknown field 'force'"),
    ({"token": TOKEN}, "missing field 'repo_id'"),
    ({"repo_id": "../etc", "token": TOKEN}, "not a Hugging Face hub model repo id"),
    ({"repo_id": "a/b/c", "token": TOKEN}, "not a Hugging Face hub model repo id"),
    ({"repo_id": "o/" + "x" * 100, "token": TOKEN}, "repo_id"),
    ({"repo_id": "org/sent", "revision": "a..b", "token": TOKEN}, "not a branch name"),
    ({"repo_id": "org/sent", "revision": "a//b", "token": TOKEN}, "not a branch name"),
    ({"repo_id": "org/sent", "revision": "-x", "token": TOKEN}, "not a branch name"),
    ({"repo_id": "org/sent", "revision": "x/", "token": TOKEN}, "not a branch name"),
    ({"repo_id": "org/sent", "revision": "main.lock", "token": TOKEN}, "not a branch name"),
    ({"repo_id": "org/sent", "revision": "refs/../../x", "token": TOKEN}, "not a branch name"),
    ({"repo_id": "org/sent", "revision": "r" * 129, "token": TOKEN}, "revision"),
    ({"repo_id": "org/sent", "commit_message": "m" * 1001, "token": TOKEN}, "commit_message"),
    ({"repo_id": "org/sent", "commit_message": "", "token": TOKEN}, "commit_message"),
    ({"repo_id": "org/sent", "token": TOKEN * 20}, "token"),
    ({"repo_id": "org/sent", "token": TOKEN + " x"}, "token"),
    ({"repo_id": "org/sent", "token": TOKEN + "\r\nX-Injected: 1"}, "token"),
    ({"repo_id": "org/sent", "token": ""}, "token"),
    ({"repo_id": "org/sent", "token": 123}, "token"),
    ({"repo_id": "org/sent", "private": "maybe", "token": TOKEN}, "private"),
    ({"repo_id": "org/sent", "commit_message": f"oops {TOKEN}", "token": TOKEN}, "contains the token"),
])
def test_bad_push_requests_are_422s_that_never_echo_the_token(make: Callable[..., TestClient], sent: list[Any],
                                                              body: dict[str, Any], says: str) -> None:
    api = make()
    r = As(api, "alice").post(PUSH, json=body)
    assert says in err(r, 422, "validation_error")
    assert TOKEN not in r.text and sent == []


def test_without_a_token_the_servers_token_pushes_into_its_namespaces_only(make: Callable[..., TestClient],
                                                                           sent: list[Any]) -> None:
    api = make()
    message = err(As(api, "alice").post(PUSH, json={"repo_id": "org/sent"}), 422, "validation_error")
    assert "FTSERVE_HF_TOKEN" in message and '"token"' in message

    api = make(FTSERVE_HF_TOKEN=SERVER_TOKEN, FTSERVE_HF_PUSH_NAMESPACES="ours, team")
    alice = As(api, "alice")
    for repo in ("theirs/sent", "sent"):  # a bare name would go to whichever user the token is
        message = err(alice.post(PUSH, json={"repo_id": repo}), 422, "validation_error")
        assert "FTSERVE_HF_PUSH_NAMESPACES: ours, team" in message
    r = alice.post(PUSH, json={"repo_id": "Ours/sent"})  # Hub namespaces are case-insensitive
    assert r.status_code == 202, r.text
    job, _ = _row(r.json()["id"])
    assert job.secret is None and job.spec["auth"] == "server"
    assert all(SERVER_TOKEN not in t for t in (r.text, alice.get(PUSHES).text, alice.get(f"/jobs/{job.id}").text))
    # A token of its own goes anywhere its owner may write.
    assert alice.post(PUSH, json={"repo_id": "theirs/sent", "token": TOKEN}).status_code == 202


def test_unknown_and_deleted_versions_are_404s(make: Callable[..., TestClient], sent: list[Any]) -> None:
    api = make()
    alice = As(api, "alice")
    body = {"repo_id": "org/sent", "token": TOKEN}
    assert "'nope'" in err(alice.post("/models/nope/versions/1/push", json=body), 404, "not_found")
    assert "no version 2" in err(alice.post("/models/sent/versions/2/push", json=body), 404, "not_found")
    assert "no version 2" in err(alice.get("/models/sent/versions/2/pushes"), 404, "not_found")
    err(alice.post("/models/sent/versions/0/push", json=body), 422, "validation_error")
    pushed = alice.post(PUSH, json=body).json()["id"]
    with session_scope() as s:
        mv = s.get(ModelVersion, ("sent", 1))
        assert mv is not None
        mv.deleted_at = now()
    assert "no version 1" in err(alice.post(PUSH, json=body), 404, "not_found")
    # Its history stays readable.
    assert [p["id"] for p in alice.get(PUSHES).json()["data"]] == [pushed]
    assert "'push_nope'" in err(alice.get(f"{PUSHES}/push_nope"), 404, "not_found")
    assert len(sent) == 1


def test_owners_push_and_read_pushes_others_get_404_or_403(make: Callable[..., TestClient],
                                                           sent: list[Any]) -> None:
    api = make()
    alice, bob, root = As(api, "alice"), As(api, "bob"), As(api, "root")
    register("bobs", owner="bob")
    body = {"repo_id": "org/sent", "token": TOKEN}
    mine = alice.post(PUSH, json=body).json()["id"]
    bobs = bob.post("/models/bobs/versions/1/push", json=body).json()["id"]

    # Private: as unknown to bob as a name that does not exist.
    for call in (lambda: bob.post(PUSH, json=body), lambda: bob.get(PUSHES),
                 lambda: bob.get(f"{PUSHES}/{mine}")):
        assert "'sent'" in err(call(), 404, "not_found")
    # A push id of another version is not found under this one (nor a cursor).
    assert f"'{bobs}'" in err(alice.get(f"{PUSHES}/{bobs}"), 404, "not_found")
    err(alice.get(PUSHES, params={"after": bobs}), 404, "not_found")
    err(bob.get(f"/models/bobs/versions/1/pushes/{mine}"), 404, "not_found")

    # Shared: bob may serve it, not push it or read where its owner pushes (403: he can see the model).
    assert alice.put("/models/sent", json={"visibility": "shared"}).status_code == 200
    assert "only its owner can push it" in err(bob.post(PUSH, json=body), 403, "forbidden")
    for call in (lambda: bob.get(PUSHES), lambda: bob.get(f"{PUSHES}/{mine}")):
        assert "only its owner can see its pushes" in err(call(), 403, "forbidden")

    # The admin pushes and reads any model's pushes; the owner sees the admin's push in the version's list.
    r = root.post(PUSH, json=body)
    assert r.status_code == 202, r.text
    assert {p["id"] for p in root.get(PUSHES).json()["data"]} == {mine, r.json()["id"]}
    assert {p["id"] for p in alice.get(PUSHES).json()["data"]} == {mine, r.json()["id"]}
    assert root.get(f"/models/bobs/versions/1/pushes/{bobs}").json()["id"] == bobs
    assert [a[0][0] for a in sent] == [mine, bobs, r.json()["id"]]
    healthy(api)


@pytest.mark.parametrize(("status", "shown", "error"), [
    ("running", "running", None), ("cancelling", "running", None),
    ("succeeded", "succeeded", None), ("failed", "failed", {"type": "user", "message": "the Hub refused"}),
    ("cancelled", "failed", {"type": "user", "message": "the push was cancelled before it finished"}),
])
def test_push_status_follows_its_job(make: Callable[..., TestClient], status: str, shown: str,
                                     error: dict[str, str] | None) -> None:
    api = make()
    alice = As(api, "alice")
    push_id = alice.post(PUSH, json={"repo_id": "org/sent", "token": TOKEN}).json()["id"]
    with session_scope() as s:
        job = s.get(Job, push_id)
        assert job is not None
        job.status = status
        if status == "failed":
            job.error_type, job.error_message = "user", "the Hub refused"
        if status == "succeeded":
            job.result = {"url": "https://hub/org/sent/commit/abc", "commit": "abc", "repo_id": "org/sent",
                          "revision": "main"}
    got = alice.get(f"{PUSHES}/{push_id}").json()
    assert (got["status"], got["error"]) == (shown, error)
    if status == "succeeded":
        assert (got["url"], got["commit"]) == ("https://hub/org/sent/commit/abc", "abc")


def test_a_jobs_push_uses_the_servers_token_and_takes_none(make: Callable[..., TestClient]) -> None:
    api = make()
    alice = As(api, "alice")
    ds = alice.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]
    r = alice.post("/jobs", json=job_body(ds, push={"repo_id": "ours/x", "token": TOKEN}))
    assert "a job's push takes no token" in err(r, 422, "validation_error") and TOKEN not in r.text
    message = err(alice.post("/jobs", json=job_body(ds, push={"repo_id": "ours/x"})), 422, "validation_error")
    assert "FTSERVE_HF_TOKEN" in message and '"token"' not in message
    err(alice.post("/jobs", json=job_body(ds, push={"repo_id": "ours/x", "revision": "a..b"})), 422,
        "validation_error")

    api = make(FTSERVE_HF_TOKEN=SERVER_TOKEN, FTSERVE_HF_PUSH_NAMESPACES="ours")
    alice = As(api, "alice")
    ds = alice.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]
    message = err(alice.post("/jobs", json=job_body(ds, push={"repo_id": "theirs/x"})), 422, "validation_error")
    assert "FTSERVE_HF_PUSH_NAMESPACES: ours" in message
    r = alice.post("/jobs", json=job_body(ds, push={"repo_id": "ours/x", "private": False}))
    assert r.status_code == 201, r.text
    assert r.json()["push"] == {"repo_id": "ours/x", "private": False, "revision": "main"}
    assert alice.post("/jobs", json=job_body(ds)).json()["push"] is None
