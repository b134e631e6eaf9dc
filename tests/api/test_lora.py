"""A job's `method` at submit, in process (TestClient on SQLite, no worker): target_modules checked against the
base's layers when its weights are on the server, an adapter version refused as a base, the method echoed, and an
adapter version's `method` and `base` on GET …/versions/{v}; a registered base with an adapter on it cannot be
deleted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.hfcache import place_in_cache
from registry.db import session_scope
from registry.models import ModelVersion, RegisteredModel
from tests.api.test_bounded_input import GOOD_CSV, err
from tests.tinymodels import save_tiny_classifier

CACHED = "ftserve-test/tiny-cls"


@pytest.fixture
def api(make_api: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> TestClient:
    monkeypatch.setattr("api.routes.jobs.send_job", lambda job_id: None)  # no worker: jobs stay queued
    place_in_cache(save_tiny_classifier(tmp_path / "tiny"), hf_home=tmp_path / "hf", repo_id=CACHED)
    return make_api()


def body(dataset_id: str, **over: Any) -> dict[str, Any]:
    return {"task": "classification", "base_model": CACHED, "dataset": {"id": dataset_id},
            "hyperparameters": {"max_steps": 2}, **over}


def add(name: str, *, method: str = "full", base: str = "hub:b", adapter: dict[str, Any] | None = None) -> None:
    with session_scope() as s:
        s.add(RegisteredModel(name=name, task="classification", owner="default"))
        s.flush()
        s.add(ModelVersion(name=name, version=1, task="classification", owner="default", base_model="b",
                           base_model_resolved=base, path=f"/nonexistent/{name}/1", method=method, adapter=adapter))


ADAPTER = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["query", "value"],
           "modules_to_save": ["classifier"],
           "base": {"resolved": "model:fullbase:1", "hub": None, "revision": None, "version": "fullbase:1"}}


def test_method_is_checked_and_echoed_at_submit(api: TestClient) -> None:
    ds = api.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]
    r = api.post("/jobs", json=body(ds))
    assert r.status_code == 201 and r.json()["method"] == "full"
    r = api.post("/jobs", json=body(ds, method={"type": "lora"}))
    assert r.status_code == 201, r.text
    # Left to the worker, which fills in the architecture's default and writes it back.
    assert r.json()["method"] == {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None}
    assert api.get(f"/jobs/{r.json()['id']}").json()["method"] == r.json()["method"]

    # The cached base's weights say which layers it has.
    message = err(api.post("/jobs", json=body(ds, method={"type": "lora", "target_modules": ["query", "q_lin"]})),
                  422, "validation_error")
    assert f"'q_lin' is not a layer of {CACHED} that LoRA can adapt" in message
    assert "query" in message and "value" in message and "word_embeddings" in message
    ok = api.post("/jobs", json=body(ds, method={"type": "lora", "target_modules": ["attention.self.query"]}))
    assert ok.status_code == 201, ok.text
    # A base this server has no weights of (not cached): the worker checks once it has loaded the model.
    far = api.post("/jobs", json=body(ds, base_model="org/not-cached", method={"type": "lora",
                                                                               "target_modules": ["anything"]}))
    assert far.status_code == 201, far.text

    assert "method.lora.r" in err(api.post("/jobs", json=body(ds, method={"type": "lora", "r": 0})), 422,
                                  "validation_error")
    assert "fp16 and bf16" in err(api.post("/jobs", json=body(ds, hyperparameters={"fp16": True, "bf16": True})),
                                  422, "validation_error")


def test_an_adapter_version_is_no_base_and_its_base_stays(api: TestClient) -> None:
    add("fullbase")
    add("adapted", method="lora", base="model:fullbase:1", adapter=ADAPTER)
    ds = api.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]
    for method in ("full", {"type": "lora"}):
        message = err(api.post("/jobs", json=body(ds, base_model="adapted:1", method=method)), 422,
                      "validation_error")
        assert "'adapted:1' is a LoRA adapter version (it loads on model:fullbase:1)" in message
        assert "use its base_model 'fullbase:1'" in message

    v = api.get("/models/adapted/versions/1").json()
    assert v["method"] == {k: ADAPTER[k] for k in ("type", "r", "alpha", "dropout", "target_modules",
                                                   "modules_to_save")}
    assert v["base"] == ADAPTER["base"]
    assert api.get("/models/fullbase/versions/1").json()["method"] == "full"
    assert api.get("/models/fullbase/versions/1").json()["base"] is None

    message = err(api.delete("/models/fullbase/versions/1"), 409, "conflict")
    assert "version adapted:1 is a LoRA adapter that loads on fullbase:1" in message
    # The whole model neither, while an adapter of another model needs it.
    assert "adapted:1" in err(api.delete("/models/fullbase"), 409, "conflict")
    assert api.delete("/models/adapted/versions/1").status_code == 204
    assert api.delete("/models/fullbase/versions/1").status_code == 204
