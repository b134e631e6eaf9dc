"""Owners, in process: with two keys, another owner's dataset, job, model, alias or events is a 404 on every
route (never a 403 that confirms it exists); a taken model name is a 409; a shared model is usable by all and
changed by its owner only; an admin key sees and acts on everything.

Models are registered as rows here (no training): predict routes are checked up to resolution — a model the
caller may not use is a 404, one it may use gets past it (its made-up files then fail to load: 503).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.settings import get_settings
from registry.db import session_scope
from registry.models import ModelAlias, ModelVersion, RegisteredModel
from tests.api.test_bounded_input import GOOD_CSV, err, healthy, job_body

KEYS = {"alice": "key-alice", "bob": "key-bob", "root": "key-root"}
ENV = {"FTSERVE_API_KEYS": ",".join(f"{n}:{k}" for n, k in KEYS.items()), "FTSERVE_ADMIN_KEYS": "root"}
# Every route, and the test below that checks its owner rule. A route added later fails
# `test_every_route_is_covered` until it is listed here with its check.
COVERED = {
    ("POST", "/datasets"), ("GET", "/datasets"), ("GET", "/datasets/{dataset_id}"),
    ("DELETE", "/datasets/{dataset_id}"),
    ("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/{job_id}"), ("POST", "/jobs/{job_id}/cancel"),
    ("GET", "/jobs/{job_id}/events"),
    ("GET", "/models"), ("GET", "/models/{name}"), ("PUT", "/models/{name}"),
    ("GET", "/models/{name}/versions/{version}"), ("PUT", "/models/{name}/aliases/{alias}"),
    ("DELETE", "/models/{name}/aliases/{alias}"),
    # test_model_files_and_deletes_by_owner
    ("GET", "/models/{name}/compare"), ("GET", "/models/{name}/versions/{version}/archive"),
    ("POST", "/models/{name}/versions"), ("DELETE", "/models/{name}/versions/{version}"), ("DELETE", "/models/{name}"),
    ("GET", "/models/{name}/versions/{version}/card"),  # test_model_cards_follow_the_models_owner
    ("POST", "/classify"), ("POST", "/answer"), ("POST", "/summarize"), ("POST", "/generate"),
    ("GET", "/metrics"),  # test_metrics_are_for_admin_keys
    # tests/api/test_push.py::test_owners_push_and_read_pushes_others_get_404_or_403
    ("POST", "/models/{name}/versions/{version}/push"), ("GET", "/models/{name}/versions/{version}/pushes"),
    ("GET", "/models/{name}/versions/{version}/pushes/{push_id}"),
    # test_evaluations_private_shared_and_admin
    ("POST", "/models/{name}/versions/{version}/evaluations"), ("GET", "/models/{name}/versions/{version}/evaluations"),
    ("GET", "/models/{name}/versions/{version}/evaluations/{evaluation_id}"),
}
OPEN = {("GET", "/healthz"), ("GET", "/readyz")}


class As:
    """A client speaking with one key."""

    def __init__(self, api: TestClient, name: str) -> None:
        self.api, self.headers = api, {"Authorization": f"Bearer {KEYS[name]}"}

    def __getattr__(self, method: str) -> Callable[..., Any]:
        call = getattr(self.api, method)
        return lambda url, **kw: call(url, headers={**self.headers, **kw.pop("headers", {})}, **kw)


@pytest.fixture
def api(make_api: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr("api.routes.jobs.send_job", lambda job_id: None)  # no worker here: jobs stay queued
    return make_api(**ENV)


def register(name: str, *, owner: str, task: str = "classification", visibility: str = "private") -> None:
    with session_scope() as s:
        s.add(RegisteredModel(name=name, task=task, owner=owner, visibility=visibility))
        s.flush()
        s.add(ModelVersion(name=name, version=1, task=task, owner=owner, base_model="b", base_model_resolved="hub:b",
                           path=f"/nonexistent/{name}/1"))
        s.flush()
        s.add(ModelAlias(name=name, alias="production", version=1))


def test_every_route_is_covered(api: TestClient) -> None:
    paths = api.app.openapi()["paths"]  # type: ignore[attr-defined]
    routes = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert routes - OPEN == COVERED


def test_datasets_and_jobs_are_their_owners_only(api: TestClient) -> None:
    alice, bob, root = As(api, "alice"), As(api, "bob"), As(api, "root")
    ds = alice.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]
    job = alice.post("/jobs", json=job_body(ds, model_name="alices")).json()["id"]
    mine = bob.post("/datasets", files={"file": ("b.csv", GOOD_CSV)}).json()["id"]

    assert [d["id"] for d in bob.get("/datasets").json()["data"]] == [mine]
    assert f"'{ds}'" in err(bob.get(f"/datasets/{ds}"), 404, "not_found")
    assert f"'{ds}'" in err(bob.get("/datasets", params={"after": ds}), 404, "not_found")
    err(bob.delete(f"/datasets/{ds}"), 404, "not_found")
    assert f"'{ds}'" in err(bob.post("/jobs", json=job_body(ds)), 404, "not_found")
    assert f"'{ds}'" in err(bob.post("/jobs", json=job_body(mine, validation={"id": ds})), 404, "not_found")
    assert bob.get("/jobs").json()["data"] == []
    err(bob.get("/jobs", params={"after": job}), 404, "not_found")
    for call in (lambda: bob.get(f"/jobs/{job}"), lambda: bob.post(f"/jobs/{job}/cancel"),
                 lambda: bob.get(f"/jobs/{job}/events"),
                 lambda: bob.get(f"/jobs/{job}/events", headers={"Accept": "text/event-stream"})):
        assert f"'{job}'" in err(call(), 404, "not_found")
    assert alice.get(f"/jobs/{job}").json()["status"] == "queued"  # nothing bob did reached it
    assert alice.get(f"/datasets/{ds}").status_code == 200

    # The admin sees and acts on everything.
    assert {d["id"] for d in root.get("/datasets").json()["data"]} == {ds, mine}
    assert root.get(f"/jobs/{job}/events").json()["data"][0]["data"] == {"status": "queued"}
    assert root.post(f"/jobs/{job}/cancel").json()["status"] == "cancelled"
    assert root.delete(f"/datasets/{mine}").status_code == 204
    healthy(api)


def test_models_private_shared_and_admin(api: TestClient) -> None:
    alice, bob, root = As(api, "alice"), As(api, "bob"), As(api, "root")
    register("alices", owner="alice")
    register("bobs", owner="bob")
    ds = bob.post("/datasets", files={"file": ("b.csv", GOOD_CSV)}).json()["id"]

    # Private: as unknown to bob as a name that does not exist.
    assert [m["name"] for m in bob.get("/models").json()["data"]] == ["bobs"]
    err(bob.get("/models", params={"after": "alices"}), 404, "not_found")
    for call in (lambda: bob.get("/models/alices"), lambda: bob.get("/models/alices/versions/1"),
                 lambda: bob.put("/models/alices/aliases/x", json={"version": 1}),
                 lambda: bob.delete("/models/alices/aliases/production"),
                 lambda: bob.put("/models/alices", json={"visibility": "shared"})):
        assert "'alices'" in err(call(), 404, "not_found")
    for base in ("alices", "alices:1", "alices@production"):  # no fall back to a hub model spelled the same
        assert "alices" in err(bob.post("/jobs", json=job_body(ds, base_model=base)), 404, "not_found")
    # One namespace: the name is taken, whatever its visibility.
    assert "taken" in err(bob.post("/jobs", json=job_body(ds, model_name="alices")), 409, "conflict")
    # Predict: a named model of another owner is a 404; no name picks among the caller's own models.
    assert "'alices'" in err(bob.post("/classify", json={"model": "alices", "inputs": ["x"]}), 404, "not_found")
    assert "bobs:1" in err(bob.post("/classify", json={"inputs": ["x"]}), 503, "not_ready")
    assert "alices:1" in err(alice.post("/classify", json={"inputs": ["x"]}), 503, "not_ready")

    # Shared: listed, read, served and trained from by every key; changed by its owner only (403: it is visible).
    shared = alice.put("/models/alices", json={"visibility": "shared"})
    assert shared.status_code == 200 and shared.json()["visibility"] == "shared"
    assert {m["name"] for m in bob.get("/models").json()["data"]} == {"alices", "bobs"}
    assert bob.get("/models/alices/versions/1").json()["ref"] == "alices:1"
    assert "alices:1" in err(bob.post("/classify", json={"model": "alices", "inputs": ["x"]}), 503, "not_ready")
    assert "bobs:1" in err(bob.post("/classify", json={"inputs": ["x"]}), 503, "not_ready")  # still his own
    r = bob.post("/jobs", json=job_body(ds, base_model="alices@production"))
    assert r.status_code == 201 and r.json()["base_model_resolved"] == "model:alices:1", r.text
    for call in (lambda: bob.put("/models/alices/aliases/x", json={"version": 1}),
                 lambda: bob.delete("/models/alices/aliases/production"),
                 lambda: bob.put("/models/alices", json={"visibility": "private"})):
        assert "only its owner" in err(call(), 403, "forbidden")
    assert "taken" in err(bob.post("/jobs", json=job_body(ds, model_name="alices")), 409, "conflict")
    # Private again: gone for bob at once (the resolution cache follows visibility).
    assert alice.put("/models/alices", json={"visibility": "private"}).status_code == 200
    err(bob.post("/classify", json={"model": "alices", "inputs": ["x"]}), 404, "not_found")

    # The admin: every model, and may change them.
    assert {m["name"] for m in root.get("/models").json()["data"]} == {"alices", "bobs"}
    assert root.put("/models/alices/aliases/staging", json={"version": 1}).json()["aliases"] == {
        "production": 1, "staging": 1}
    assert "alices:1" in err(root.post("/classify", json={"model": "alices", "inputs": ["x"]}), 503, "not_ready")
    healthy(api)


def test_predict_routes_resolve_among_the_callers_models(api: TestClient) -> None:
    bob = As(api, "bob")
    register("alice-qa", owner="alice", task="question-answering")
    register("alice-sum", owner="alice", task="summarization")
    register("alice-gen", owner="alice", task="generation")
    calls = {"/answer": {"question": "q", "context": "c"}, "/summarize": {"inputs": ["x"]},
             "/generate": {"prompt": "x"}}
    for path, body in calls.items():
        name = {"/answer": "alice-qa", "/summarize": "alice-sum", "/generate": "alice-gen"}[path]
        assert f"'{name}'" in err(bob.post(path, json={**body, "model": name}), 404, "not_found")
        assert "no " in err(bob.post(path, json=body), 404, "not_found")  # none of his own
    assert "'alice-gen'" in err(bob.post("/generate", json={"prompt": "x", "model": "alice-gen", "stream": True}),
                                404, "not_found")


def test_model_cards_follow_the_models_owner(api: TestClient) -> None:
    from datetime import UTC, datetime

    from core.settings import get_settings
    from registry.store import ArtifactStore

    alice, bob, root = As(api, "alice"), As(api, "bob"), As(api, "root")
    register("alices", owner="alice")
    store = ArtifactStore(get_settings().data_dir)
    folder = store.version_dir("alices", 1)
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# alices (version 1)\n", encoding="utf-8")
    url = "/models/alices/versions/1/card"

    mine = alice.get(url)
    assert mine.status_code == 200 and mine.headers["content-type"].startswith("text/markdown")
    assert mine.text.startswith("---\nlicense: mit")
    assert root.get(url).text == mine.text
    assert "'alices'" in err(bob.get(url), 404, "not_found")  # private: as unknown as a missing name
    assert alice.put("/models/alices", json={"visibility": "shared"}).status_code == 200
    assert bob.get(url).text == mine.text  # shared: readable by every key
    assert "version 2" in err(alice.get("/models/alices/versions/2/card"), 404, "not_found")
    (folder / "README.md").unlink()
    assert "no model card" in err(alice.get(url), 404, "not_found")
    with session_scope() as s:
        s.get(ModelVersion, ("alices", 1)).deleted_at = datetime.now(UTC)  # type: ignore[union-attr]
    assert "version 1" in err(alice.get(url), 404, "not_found")
    healthy(api)


def test_metrics_are_for_admin_keys(api: TestClient) -> None:
    alice, bob, root = As(api, "alice"), As(api, "bob"), As(api, "root")
    register("alice-secret", owner="alice")
    err(alice.post("/classify", json={"model": "alice-secret", "inputs": ["x"]}), 503, "not_ready")
    assert "admin key" in err(bob.get("/metrics"), 403, "forbidden")
    assert "admin key" in err(alice.get("/metrics"), 403, "forbidden")
    assert 'model="alice-secret:1"' in root.get("/metrics").text


def test_idempotency_keys_are_per_owner(api: TestClient) -> None:
    alice, bob = As(api, "alice"), As(api, "bob")
    a = alice.post("/jobs", json=job_body(alice.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]),
                   headers={"Idempotency-Key": "same"})
    b = bob.post("/jobs", json=job_body(bob.post("/datasets", files={"file": ("b.csv", GOOD_CSV)}).json()["id"]),
                 headers={"Idempotency-Key": "same"})
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]


def test_active_jobs_are_capped_per_owner(make_api: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr("api.routes.jobs.send_job", lambda job_id: None)
    api = make_api(**ENV, FTSERVE_MAX_ACTIVE_JOBS_PER_OWNER="2")
    alice, bob = As(api, "alice"), As(api, "bob")
    ds = alice.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]
    first = [alice.post("/jobs", json=job_body(ds)).json()["id"] for _ in range(2)]
    r = alice.post("/jobs", json=job_body(ds))
    assert "2 of your jobs" in err(r, 429, "rate_limited") and int(r.headers["Retry-After"]) > 0
    theirs = bob.post("/datasets", files={"file": ("b.csv", GOOD_CSV)}).json()["id"]
    assert bob.post("/jobs", json=job_body(theirs)).status_code == 201  # one owner does not block another
    alice.post(f"/jobs/{first[0]}/cancel")
    assert alice.post("/jobs", json=job_body(ds)).status_code == 201


def test_auth_off_is_one_owner(api_off: TestClient) -> None:
    ds = api_off.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()
    assert ds["owner"] == "default"
    register("mine", owner="default")
    assert api_off.get("/models/mine").status_code == 200


@pytest.fixture
def api_off(make_api: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr("api.routes.jobs.send_job", lambda job_id: None)
    return make_api()


def test_model_files_and_deletes_by_owner(api: TestClient, tmp_path: Path) -> None:
    """Another owner's private model: compare, archive, import into and delete are 404s; shared: compare and
    archive for every key, import and delete for its owner (403 for others) and the admin."""
    from tests.api.test_model_files import send, tar_of
    from tests.tinymodels import save_tiny_classifier

    alice, bob, root = As(api, "alice"), As(api, "bob"), As(api, "root")
    register("alices", owner="alice")
    with session_scope() as s:
        s.add(ModelVersion(name="alices", version=2, task="classification", owner="alice", base_model="b",
                           base_model_resolved="hub:b", path="unused", metrics={"accuracy": 0.5}))
    for v in (1, 2):
        folder = get_settings().data_dir / "models" / "alices" / str(v)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    archive = tar_of(save_tiny_classifier(tmp_path / "tiny"))

    reads = (lambda who: who.get("/models/alices/compare", params={"versions": "1,2"}),
             lambda who: who.get("/models/alices/versions/1/archive"))
    changes = (lambda who: send(who, "alices", archive),
               lambda who: who.delete("/models/alices/versions/2"),
               lambda who: who.delete("/models/alices", params={"force": "true"}))
    for call in (*reads, *changes):
        assert "'alices'" in err(call(bob), 404, "not_found")
    assert reads[0](alice).json()["metrics"] == {"accuracy": {"1": None, "2": 0.5}}
    assert alice.put("/models/alices", json={"visibility": "shared"}).status_code == 200
    assert reads[0](bob).json()["versions"] == [1, 2]
    with tarfile.open(fileobj=io.BytesIO(reads[1](bob).content), mode="r:gz") as tar:
        assert tar.getnames() == ["alices-1/config.json"]
    for call in changes:
        assert "only its owner" in err(call(bob), 403, "forbidden")
    # A new name is bob's own; the owner imports into hers; the admin deletes anyone's.
    assert send(bob, "bobs-import", archive).json()["owner"] == "bob"
    assert send(alice, "alices", archive).json()["ref"] == "alices:3"
    assert alice.delete("/models/alices/versions/2").status_code == 204
    assert root.delete("/models/alices", params={"force": "true"}).status_code == 204
    assert alice.get("/models/alices").json()["versions"] == []
    # The deleted model keeps its name for its owner.
    assert "only its owner" in err(send(bob, "alices", archive), 403, "forbidden")


def test_evaluations_private_shared_and_admin(api: TestClient) -> None:
    alice, bob, root = As(api, "alice"), As(api, "bob"), As(api, "root")
    register("alices", owner="alice")
    ds_alice = alice.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]
    ds_bob = bob.post("/datasets", files={"file": ("b.csv", GOOD_CSV)}).json()["id"]
    url = "/models/alices/versions/1/evaluations"
    mine = alice.post(url, json={"dataset": {"id": ds_alice}})
    assert mine.status_code == 202, mine.text
    mine_id = mine.json()["id"]

    # Private: bob can neither evaluate it nor read its evaluations.
    for call in (lambda: bob.post(url, json={"dataset": {"id": ds_bob}}), lambda: bob.get(url),
                 lambda: bob.get(f"{url}/{mine_id}")):
        assert "'alices'" in err(call(), 404, "not_found")

    # Shared: every key may evaluate it, on its own data only; each sees its own evaluations, the admin all.
    assert alice.put("/models/alices", json={"visibility": "shared"}).status_code == 200
    assert f"'{ds_alice}'" in err(bob.post(url, json={"dataset": {"id": ds_alice}}), 404, "not_found")
    his = bob.post(url, json={"dataset": {"id": ds_bob}})
    assert his.status_code == 202 and his.json()["owner"] == "bob", his.text
    his_id = his.json()["id"]
    assert [e["id"] for e in bob.get(url).json()["data"]] == [his_id]
    assert [e["id"] for e in alice.get(url).json()["data"]] == [mine_id]
    assert {e["id"] for e in root.get(url).json()["data"]} == {mine_id, his_id}
    assert f"'{mine_id}'" in err(bob.get(f"{url}/{mine_id}"), 404, "not_found")
    assert f"'{his_id}'" in err(alice.get(f"{url}/{his_id}"), 404, "not_found")
    err(bob.get(url, params={"after": mine_id}), 404, "not_found")  # another owner's id is no cursor
    assert bob.get(f"{url}/{his_id}").json()["status"] == "queued"
    assert root.get(f"{url}/{mine_id}").json()["owner"] == "alice"
    # The evaluation jobs are their callers' jobs.
    assert [j["id"] for j in bob.get("/jobs", params={"kind": "evaluate"}).json()["data"]] == [his_id]
    assert root.post(url, json={"dataset": {"id": ds_bob}}).status_code == 202  # an admin reads every dataset
    healthy(api)
