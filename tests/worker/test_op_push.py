"""The push operation (worker/op_push.py) against the Hub stand-in, in process (no Celery): the repo is created
with its visibility, the branch when it is not main, the version's files (and nothing else) are committed, the
card is the version's README.md; a refused token, an unreachable endpoint and a missing server token fail the
push with a message that says so; the token is in no event, result, error or log record; offline mode is off
for the push only."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from huggingface_hub import constants
from safetensors.numpy import save_file

from core.settings import Settings, get_settings
from registry import jobs as jobrepo
from registry.db import migrate, session_scope
from registry.jobs import Fence
from registry.models import Job, JobEvent, ModelVersion, RegisteredModel
from registry.store import ArtifactStore
from tests.hubstandin import HubStandIn
from tests.stack import free_port
from worker import operations
from worker.child import JobCallbacks

TOKEN = "hf_user_" + secrets.token_hex(12)
SERVER_TOKEN = "hf_server_" + secrets.token_hex(12)
CARD = "---\nlicense: apache-2.0\ntags:\n- ftserve\n---\n\n# sent:1\n\nA test card.\n"
FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
         "special_tokens_map.json", "training_params.json", "metrics.json", "README.md"}


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    with HubStandIn(tokens={TOKEN, SERVER_TOKEN}) as stand_in:
        yield stand_in


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Settings for a data dir of its own; the library as the worker's child has it: offline for downloads, and
    its Xet path off (the stand-in speaks the regular commit + LFS protocol: see tests/hubstandin.py)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    for key in ("FTSERVE_DATABASE_URL", "FTSERVE_HF_TOKEN", "FTSERVE_HF_PUSH_NAMESPACES", "FTSERVE_HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FTSERVE_DATA_DIR", str(tmp_path))
    values: dict[str, str] = {}

    def set_env(**kw: str) -> None:
        for key, value in kw.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()

    get_settings.cache_clear()
    migrate(get_settings())
    _version(ArtifactStore(tmp_path))
    values["set"] = set_env  # type: ignore[assignment]
    yield values
    get_settings.cache_clear()


def _version(store: ArtifactStore) -> None:
    folder = store.version_dir("sent", 1)
    folder.mkdir(parents=True)
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(folder / "model.safetensors"))
    for name in FILES - {"model.safetensors", "README.md"}:
        (folder / name).write_text(json.dumps({"file": name}))
    (folder / "README.md").write_text(CARD)
    (store.model_dir("sent") / "unrelated.txt").write_text("outside the version dir")
    with session_scope() as s:
        s.add(RegisteredModel(name="sent", task="classification", owner="alice"))
        s.flush()
        s.add(ModelVersion(name="sent", version=1, task="classification", owner="alice", base_model="b",
                           base_model_resolved="hub:b", path=str(folder)))


def _push(spec: dict[str, Any], *, secret: str | None) -> tuple[Job, list[JobEvent]]:
    job_id = f"push_{secrets.token_hex(6)}"
    with session_scope() as s:
        jobrepo.create_job(s, Job(id=job_id, owner="alice", kind="push", task="classification",
                                  spec={"private": True, "revision": "main", "commit_message": "Upload sent:1",
                                        "auth": "request" if secret else "server", **spec},
                                  model_name="sent", model_version=1, secret=secret))
    with session_scope() as s:
        claimed = jobrepo.claim(s, job_id, worker_id="w")
        assert claimed is not None
        fence = Fence(job_id=job_id, worker_id="w", attempt=claimed.attempt)
    settings: Settings = get_settings()
    code = operations.run_operation("push", fence, settings=settings, store=ArtifactStore(settings.data_dir),
                                    callbacks=JobCallbacks(fence, settings))
    assert code == 0
    with session_scope() as s:
        job = jobrepo.get_job(s, job_id)
        events = list(s.query(JobEvent).filter(JobEvent.job_id == job_id).order_by(JobEvent.id))
        s.expunge_all()
    return job, events


def _no_token_anywhere(job: Job, events: list[JobEvent], caplog: pytest.LogCaptureFixture) -> None:
    assert job.secret is None
    shown = json.dumps([job.result, job.error_message, job.spec, [(e.message, e.data) for e in events]])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records  # the capture works (huggingface_hub logs its requests at DEBUG)
    for token in (TOKEN, SERVER_TOKEN):
        assert token not in shown and token not in logged


def test_a_push_creates_the_repo_and_commits_the_version(env: dict[str, Any], hub: HubStandIn,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env["set"](FTSERVE_HF_ENDPOINT=hub.url)
    job, events = _push({"repo_id": "org/sent"}, secret=TOKEN)
    assert (job.status, job.error_message) == ("succeeded", None)

    [create] = hub.calls("POST", "/api/repos/create")
    assert json.loads(create.body) == {"name": "sent", "organization": "org", "visibility": "private",
                                       "type": "model"}
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert hub.repos["org/sent"].private is True
    files = hub.files("org/sent")
    assert set(files) == FILES | {".gitattributes"}  # nothing from outside the version dir
    folder = ArtifactStore(get_settings().data_dir).version_dir("sent", 1)
    assert files["README.md"].decode() == CARD
    assert all(files[name] == (folder / name).read_bytes() for name in FILES)
    assert hub.calls("POST", r"/org/sent\.git/info/lfs/objects/batch")  # the weights went as an LFS object
    assert hub.unhandled == []
    [commit] = hub.repos["org/sent"].commits
    assert commit["summary"] == "Upload sent:1"
    assert job.result == {"url": f"{hub.url}/org/sent/commit/{commit['oid']}", "commit": commit["oid"],
                          "repo_id": "org/sent", "revision": "main", "repo_url": f"{hub.url}/org/sent"}
    assert any(e.data.get("commit") == commit["oid"] for e in events)
    _no_token_anywhere(job, events, caplog)
    assert constants.HF_HUB_OFFLINE is True  # back as it was: offline mode is off for the push only


def test_a_branch_is_created_and_a_second_push_reuses_the_repo(env: dict[str, Any], hub: HubStandIn) -> None:
    env["set"](FTSERVE_HF_ENDPOINT=hub.url)
    assert _push({"repo_id": "org/sent", "private": False}, secret=TOKEN)[0].status == "succeeded"
    job, _ = _push({"repo_id": "org/sent", "revision": "exp/lr-3e-5"}, secret=TOKEN)
    assert job.status == "succeeded", job.error_message
    assert hub.calls("POST", "/api/models/org/sent/branch/exp%2Flr-3e-5")  # quoted: one path segment
    assert set(hub.files("org/sent", "exp/lr-3e-5")) == FILES | {".gitattributes"}
    assert hub.repos["org/sent"].private is False  # the visibility of an existing repo stays the Hub's business
    assert job.result is not None and job.result["revision"] == "exp/lr-3e-5"


def test_a_refused_token_fails_the_push_with_the_hubs_message(env: dict[str, Any],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # A Hub whose message echoes what it was sent: the token is scrubbed from what is stored.
    with HubStandIn(tokens=set(), refuse_message=f"Invalid credentials: token {TOKEN} expired") as hub:
        env["set"](FTSERVE_HF_ENDPOINT=hub.url)
        job, events = _push({"repo_id": "org/sent"}, secret=TOKEN)
    assert (job.status, job.error_type) == ("failed", "user")
    assert job.error_message is not None
    assert job.error_message.startswith(f"the Hub at {hub.url.removeprefix('http://')} refused the token (401)")
    assert "Invalid credentials: token *** expired" in job.error_message
    assert hub.repos == {}
    _no_token_anywhere(job, events, caplog)


def test_an_unreachable_endpoint_fails_the_push_saying_so(env: dict[str, Any],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()  # nothing listens there
    env["set"](FTSERVE_HF_ENDPOINT=f"http://127.0.0.1:{port}")
    job, events = _push({"repo_id": "org/sent"}, secret=TOKEN)
    assert (job.status, job.error_type) == ("failed", "user")
    assert f"could not reach the Hub at 127.0.0.1:{port}" in str(job.error_message)
    assert "FTSERVE_HF_ENDPOINT" in str(job.error_message)
    _no_token_anywhere(job, events, caplog)


def test_the_servers_token_is_used_within_its_namespaces_only(env: dict[str, Any], hub: HubStandIn,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env["set"](FTSERVE_HF_ENDPOINT=hub.url)
    job, _ = _push({"repo_id": "ours/sent"}, secret=None)
    assert job.status == "failed" and "FTSERVE_HF_TOKEN is not set" in str(job.error_message)

    env["set"](FTSERVE_HF_TOKEN=SERVER_TOKEN, FTSERVE_HF_PUSH_NAMESPACES="ours, team")
    job, _ = _push({"repo_id": "theirs/sent"}, secret=None)  # the settings changed since it was queued
    assert job.status == "failed" and "FTSERVE_HF_PUSH_NAMESPACES: ours, team" in str(job.error_message)
    job, events = _push({"repo_id": "ours/sent"}, secret=None)
    assert job.status == "succeeded", job.error_message
    assert hub.calls("POST", "/api/repos/create")[-1].headers["authorization"] == f"Bearer {SERVER_TOKEN}"
    _no_token_anywhere(job, events, caplog)


def test_a_request_push_never_falls_back_to_the_servers_token(env: dict[str, Any], hub: HubStandIn) -> None:
    env["set"](FTSERVE_HF_ENDPOINT=hub.url, FTSERVE_HF_TOKEN=SERVER_TOKEN, FTSERVE_HF_PUSH_NAMESPACES="org")
    job, _ = _push({"repo_id": "org/sent", "auth": "request"}, secret=None)  # its token is gone
    assert job.status == "failed" and "token is gone" in str(job.error_message)
    assert hub.requests == []


def test_a_deleted_version_is_not_pushed(env: dict[str, Any], hub: HubStandIn) -> None:
    env["set"](FTSERVE_HF_ENDPOINT=hub.url)
    with session_scope() as s:
        mv = s.get(ModelVersion, ("sent", 1))
        assert mv is not None
        mv.deleted_at = jobrepo.utcnow()
    job, _ = _push({"repo_id": "org/sent"}, secret=TOKEN)
    assert job.status == "failed" and "no version 1" in str(job.error_message)
    assert hub.requests == []
