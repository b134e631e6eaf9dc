"""Export → import → the same predictions, and deleting versions, with real processes (uvicorn + Celery worker on
PostgreSQL and Redis): a trained version's archive imported under another name classifies with the same scores;
an aliased version cannot be deleted; a deleted one frees its files and is a 404 to predict, even right after
it was served (the API's resolution cache follows the deletion); the next trained version gets a new number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.test_classification import csv_slice
from tests.stack import Stack
from tests.tinymodels import TINY_BERT

TEXTS = ["a wonderful film", "dull and far too long", "it was fine"]


def train(stack: Stack, dataset_id: str, model_name: str) -> dict[str, Any]:
    r = stack.client.post("/jobs", json={
        "task": "classification", "base_model": TINY_BERT, "dataset": {"id": dataset_id}, "model_name": model_name,
        "hyperparameters": {"max_steps": 2, "batch_size": 8}})
    assert r.status_code == 201, r.text
    job = stack.wait_job(r.json()["id"], timeout=180)
    assert job["status"] == "succeeded", (job["error"], stack.logs("worker"))
    return job


def scores(stack: Stack, model: str) -> list[dict[str, float]]:
    r = stack.client.post("/classify", json={"model": model, "inputs": TEXTS, "top_k": None})
    assert r.status_code == 200, r.text
    return [{p["label"]: p["score"] for p in preds} for preds in r.json()["predictions"]]


def test_export_import_and_delete(pg_stack: Stack, shared_data: Path) -> None:
    stack = pg_stack
    ds = stack.upload(content=csv_slice(shared_data / "classification" / "train.csv", 60),
                      filename="train.csv").json()["id"]
    job = train(stack, ds, "exported")
    assert job["model"]["ref"] == "exported:1"

    r = stack.client.get("/models/exported/versions/1/archive")
    assert r.status_code == 200 and r.headers["content-disposition"] == 'attachment; filename="exported-1.tar.gz"'
    r = stack.client.post("/models/reimported/versions", files={"file": ("exported-1.tar.gz", r.content)})
    assert r.status_code == 201, r.text
    assert r.json()["ref"] == "reimported:1" and r.json()["task"] == "classification"
    original, copy = scores(stack, "exported:1"), scores(stack, "reimported:1")
    for a, b in zip(original, copy, strict=True):
        assert a.keys() == b.keys()
        assert all(abs(a[label] - b[label]) < 1e-5 for label in a), (a, b)
    # The archive's card came along (a trained version has one); the import kept it.
    card = stack.data_dir / "models" / "reimported" / "1" / "README.md"
    assert card.read_text() == (stack.data_dir / "models" / "exported" / "1" / "README.md").read_text()

    assert stack.client.put("/models/exported/aliases/production", json={"version": 1}).status_code == 200
    r = stack.client.delete("/models/exported/versions/1")
    assert r.status_code == 409 and "alias 'production'" in r.json()["error"]["message"], r.text

    r = stack.client.delete("/models/reimported/versions/1")
    assert r.status_code == 204, r.text
    assert not (stack.data_dir / "models" / "reimported" / "1").exists()
    for model in ("reimported:1", "reimported"):  # served a moment ago: the cached resolution is gone too
        r = stack.client.post("/classify", json={"model": model, "inputs": ["x"]})
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", r.text
    assert stack.client.get("/models/reimported/versions/1").status_code == 404

    again = train(stack, ds, "reimported")
    assert again["model"]["ref"] == "reimported:2"  # never the deleted number
    assert len(scores(stack, "reimported")) == len(TEXTS)
