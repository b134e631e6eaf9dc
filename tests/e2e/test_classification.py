"""Classification end to end: upload → job → Celery worker → registry → /classify, real processes."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from core.hfcache import cache_repo_dir
from tests.reference import classify_reference, losses, weights_differ
from tests.stack import Stack
from tests.tinymodels import TINY_BERT


def csv_slice(path: Path, rows: int) -> bytes:
    with path.open(encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = [r for _, r in zip(range(rows), reader, strict=False)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return out.getvalue().encode()


def train_and_check(stack: Stack, hf_home: Path, data: bytes, *, model_name: str, labels: set[str],
                    hyperparameters: dict[str, Any]) -> dict[str, Any]:
    r = stack.upload(content=data, filename="train.csv")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["columns"] == ["text", "label"] and ds["id"].startswith("ds_")
    r = stack.client.post("/jobs", json={
        "task": "classification", "base_model": TINY_BERT, "dataset": {"id": ds["id"]},
        "model_name": model_name, "hyperparameters": hyperparameters,
    })
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["base_model_resolved"] == f"hub:{TINY_BERT}"
    job = stack.wait_job(job["id"])
    assert job["status"] == "succeeded", (job["error"], stack.logs("worker"))
    assert set(job["metrics"]) >= {"accuracy", "f1_macro", "eval_loss", "train_loss", "train_runtime_s"}
    assert 0 <= job["metrics"]["accuracy"] <= 1 and 0 <= job["metrics"]["f1_macro"] <= 1
    assert job["model"]["ref"] == f"{model_name}:{job['model']['version']}"
    assert job["data_stats"]["train_rows"] + job["data_stats"]["validation_rows"] == ds["num_rows"]

    # Training mechanics: finite losses that fall, weights that moved.
    loss = losses(stack.events(job["id"]))
    assert len(loss) >= 4, loss
    k = max(1, len(loss) // 4)
    assert sum(loss[-k:]) / k < sum(loss[:k]) / k, loss
    version_dir = stack.data_dir / "models" / model_name / str(job["model"]["version"])
    for name in ("model.safetensors", "config.json", "tokenizer.json", "training_params.json", "metrics.json",
                 "README.md"):
        assert (version_dir / name).exists(), name
    assert not list(version_dir.glob("*.bin")), "no pickles in a served artifact"
    repo = cache_repo_dir(hf_home, TINY_BERT)
    base_dir = repo / "snapshots" / (repo / "refs" / "main").read_text().strip()
    compared, changed = weights_differ(base_dir, version_dir)
    assert compared > 10 and changed >= compared // 2, (compared, changed)

    # Served predictions equal a plain-transformers reference run of the saved version dir.
    texts = ["a great and moving film", "dull , lifeless and far too long", "what is the capital of peru ?"]
    r = stack.client.post("/classify", json={"model": model_name, "inputs": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == job["model"]["ref"]
    assert len(body["predictions"]) == len(texts)
    for text, pred in zip(texts, body["predictions"], strict=True):
        assert len(pred) == 1 and pred[0]["label"] in labels
        ref_label, ref_score = classify_reference(version_dir, text)
        assert pred[0]["label"] == ref_label
        assert pred[0]["score"] == pytest.approx(ref_score, abs=1e-4)
    r = stack.client.post("/classify", json={"model": job["model"]["ref"], "inputs": texts[0], "top_k": None})
    ranked = r.json()["predictions"][0]
    assert {p["label"] for p in ranked} == labels
    assert [p["score"] for p in ranked] == sorted((p["score"] for p in ranked), reverse=True)
    assert sum(p["score"] for p in ranked) == pytest.approx(1.0, abs=1e-5)
    return job


HP = {"epochs": 3, "learning_rate": 2e-3, "batch_size": 16, "warmup_steps": 0, "logging_steps": 2, "max_length": 64,
      "seed": 7}


def test_binary_classification_on_postgres_and_redis(pg_stack: Stack, hf_home: Path, shared_data: Path) -> None:
    data = csv_slice(shared_data / "classification" / "train.csv", 480)
    job = train_and_check(pg_stack, hf_home, data, model_name="sentiment", labels={"negative", "positive"},
                          hyperparameters=HP)
    # The registry shows the version with its provenance.
    r = pg_stack.client.get("/models/sentiment")
    assert r.status_code == 200 and r.json()["latest_version"] == job["model"]["version"]
    v = pg_stack.client.get(f"/models/sentiment/versions/{job['model']['version']}").json()
    assert v["job_id"] == job["id"] and v["dataset"]["sha256"] and v["metrics"] == job["metrics"]
    # Omitted model → the newest classification model.
    r = pg_stack.client.post("/classify", json={"inputs": ["fine"]})
    assert r.status_code == 200 and r.json()["model"] == job["model"]["ref"]

    # Continue fine-tuning from the registered model: a bare registered name wins over a hub id.
    ds_id = pg_stack.upload(content=data, filename="more.csv").json()["id"]
    r = pg_stack.client.post("/jobs", json={
        "task": "classification", "base_model": "sentiment", "dataset": {"id": ds_id}, "model_name": "sentiment",
        "hyperparameters": {"max_steps": 4, "learning_rate": 1e-3},
    })
    assert r.status_code == 201, r.text
    assert r.json()["base_model_resolved"] == f"model:sentiment:{job['model']['version']}"
    job2 = pg_stack.wait_job(r.json()["id"])
    assert job2["status"] == "succeeded", job2["error"]
    assert job2["model"]["version"] == job["model"]["version"] + 1
    assert not [e for e in pg_stack.events(job2["id"]) if "head re-created" in e["message"]]
    r = pg_stack.client.post("/classify", json={"model": "sentiment", "inputs": ["fine"]})
    assert r.json()["model"] == job2["model"]["ref"]  # `name` alone → the newest version


def test_multiclass_string_labels_on_postgres_and_redis(pg_stack: Stack, hf_home: Path, shared_data: Path) -> None:
    data = csv_slice(shared_data / "classification-multiclass" / "train.csv", 600)
    labels = {"abbreviation", "description", "entity", "human", "location", "numeric"}
    job = train_and_check(pg_stack, hf_home, data, model_name="trec", labels=labels, hyperparameters=HP)
    assert job["data_stats"]["validation_rows"] >= 6  # stratified: every class with 2+ rows gives one


def test_embedded_defaults_sqlite_and_filesystem_broker(embedded_stack: Stack, hf_home: Path,
                                                        shared_data: Path) -> None:
    assert (embedded_stack.data_dir / "ftserve.db").exists()
    data = csv_slice(shared_data / "classification" / "train.csv", 480)
    train_and_check(embedded_stack, hf_home, data, model_name="sentiment", labels={"negative", "positive"},
                    hyperparameters=HP)
