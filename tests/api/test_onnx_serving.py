"""FTSERVE_ONNX through the API (in process, TestClient on SQLite): imported versions are served by their ONNX
Runtime export, with the answers of the PyTorch model, and deleting a version deletes its export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from inference.service import _load_predictor
from tests.api.test_model_files import send, tar_of
from tests.inference.test_onnx_runtime import PAIRS, TEXTS
from tests.tinymodels import save_tiny_encoder


def test_onnx_int8_serves_classify_and_answer_and_a_deleted_version_takes_its_export_along(
        make_api: Callable[..., TestClient], tmp_path: Path) -> None:
    models = {"sent": save_tiny_encoder(tmp_path / "sent", task="classification"),
              "reader": save_tiny_encoder(tmp_path / "reader", task="question-answering")}
    api = make_api(FTSERVE_ONNX="int8", FTSERVE_TORCH_THREADS="2")  # after the models: its warm-up imports
    # transformers in a thread
    assert send(api, "sent", tar_of(models["sent"])).status_code == 201
    assert send(api, "reader", tar_of(models["reader"]), task="question-answering").status_code == 201
    cache = tmp_path / "data" / "cache"

    r = api.post("/classify", json={"model": "sent", "inputs": TEXTS, "top_k": None})
    assert r.status_code == 200, r.text
    want = _load_predictor("classification", str(models["sent"]))(TEXTS, top_k=None)
    for got, ref in zip(r.json()["predictions"], want, strict=True):
        assert [p["label"] for p in got] == [p["label"] for p in ref]
        assert [p["score"] for p in got] == pytest.approx([p["score"] for p in ref], abs=0.02)
    # Two batches at once, on a forward thread each; the lanes are the model's (shared by its batchers, one per
    # parameter set).
    service = api.app.state.inference
    batchers = [b for (ref, _), b in service._batchers.items() if ref == "sent:1"]
    assert len(batchers) == 1 and batchers[0].lanes == 2
    assert batchers[0]._free_lanes is service._lanes["sent:1"]
    assert service._executors["forward", "sent:1"]._max_workers == 2

    r = api.post("/answer", json={"model": "reader", "inputs": [{"question": q, "context": c} for q, c in PAIRS]})
    assert r.status_code == 200, r.text
    want_spans = _load_predictor("question-answering", str(models["reader"]))(PAIRS)
    assert [(a["answer"], a["start"], a["end"]) for a in r.json()["answers"]] == [
        (a["answer"], a["start"], a["end"]) for a in want_spans]

    # What answered was the int8 export, cached outside the version dirs.
    for name in models:
        assert len(list((cache / name / "1" / "onnx").glob("*-int8/model.onnx"))) == 1, name
        assert not list((tmp_path / "data" / "models" / name / "1").glob("*.onnx"))
    assert api.delete("/models/sent/versions/1").status_code == 204
    assert not (cache / "sent" / "1").exists()
    assert (cache / "reader" / "1").is_dir()
