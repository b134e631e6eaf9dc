"""The model card of a trained version, with real processes (uvicorn, a Celery worker, PostgreSQL, Redis) and two
keys: it loads with huggingface_hub, has every front-matter field and heading, its model-index equals
metrics.json, its training-results table has one row per evaluation the job reported, the job's license is in it,
its snippet runs, and another owner gets a 404. The version's lineage names the base model's cached revision."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import ModelCard

from core.hfcache import cache_repo_dir
from tests.conftest import fresh_pg_database
from tests.e2e.test_classification import csv_slice
from tests.e2e.test_tenancy import KEYS, auth, wait
from tests.stack import Stack, free_port
from tests.tinymodels import TINY_BERT
from training.model_card import HEADINGS


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str) -> Iterator[Stack]:
    with fresh_pg_database() as url:
        env = {"FTSERVE_DATABASE_URL": url, "FTSERVE_BROKER_URL": redis_url, "FTSERVE_QUEUE": f"card_{free_port()}",
               "FTSERVE_API_KEYS": ",".join(f"{n}:{k}" for n, k in KEYS.items()), "HF_HOME": str(hf_home),
               "HF_HUB_OFFLINE": "1"}
        with Stack(data_dir=tmp_path_factory.mktemp("card"), env=env) as s:
            yield s


def events(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    r = stack.client.get(f"/jobs/{job_id}/events", params={"limit": 1000}, headers=auth("alice"))
    assert r.status_code == 200 and not r.json()["has_more"]
    return r.json()["data"]


def test_card_of_a_trained_version(stack: Stack, hf_home: Path, shared_data: Path, tmp_path: Path) -> None:
    csv = csv_slice(shared_data / "classification" / "train.csv", 80)
    ds = stack.upload(content=csv, filename="reviews.csv", headers=auth("alice")).json()
    r = stack.client.post("/jobs", headers=auth("alice"), json={
        "task": "classification", "base_model": TINY_BERT, "dataset": {"id": ds["id"]}, "model_name": "carded",
        "license": "mit", "language": "en",
        "hyperparameters": {"max_steps": 4, "eval_steps": 2, "batch_size": 8, "max_length": 64}})
    assert r.status_code == 201, r.text
    assert (r.json()["license"], r.json()["language"]) == ("mit", ["en"])
    job = wait(stack, "alice", r.json()["id"])
    assert job["status"] == "succeeded", job["error"]

    card_url = "/models/carded/versions/1/card"
    resp = stack.client.get(card_url, headers=auth("alice"))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/markdown")
    path = tmp_path / "README.md"
    path.write_text(resp.text, encoding="utf-8")
    card = ModelCard.load(path)
    version_dir = stack.data_dir / "models" / "carded" / "1"
    assert resp.text == (version_dir / "README.md").read_text(encoding="utf-8")

    data = card.data.to_dict()
    assert data["license"] == "mit"
    assert data["base_model"] == TINY_BERT
    assert data["language"] == ["en"]
    assert data["tags"] == ["ftserve", "classification"]
    assert data["pipeline_tag"] == "text-classification"
    assert data["library_name"] == "transformers"
    assert "datasets" not in data  # an uploaded dataset has no hub id; the card names its file and sha256
    metrics = json.loads((version_dir / "metrics.json").read_text())
    (result,) = data["model-index"][0]["results"]
    assert {m["type"]: m["value"] for m in result["metrics"]} == metrics
    assert result["dataset"]["revision"] == ds["sha256"]

    text = card.text
    assert re.findall(r"^## (.+)$", text, re.MULTILINE) == list(HEADINGS)
    for fact in ("reviews.csv", ds["sha256"], "License: `mit`", "max_length: `64`", "`en`",
                 '"model": "carded:1"', "Transformers 5.", "PyTorch 2."):
        assert fact in text, fact
    evaluations = [e for e in events(stack, job["id"]) if e["type"] == "metrics" and "eval_loss" in e["data"]]
    assert len(evaluations) == 2  # steps 2 and 4
    section = text.split("## Training results")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Epoch")]
    assert [int(row.split("|")[2]) for row in rows] == [e["data"]["step"] for e in evaluations]

    # The card's snippet loads the version folder and classifies like the service does.
    snippet = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)  # type: ignore[union-attr]
    snippet = snippet.replace('model_id = "./carded-1"', f"model_id = {str(version_dir)!r}")
    assert f"model_id = {str(version_dir)!r}" in snippet
    exec(compile(snippet, "card snippet", "exec"), {})  # our own card's code, on our own model

    # Another owner: as unknown as a missing model.
    other = stack.client.get(card_url, headers=auth("bob"))
    assert other.status_code == 404 and other.json()["error"]["type"] == "not_found"
    assert stack.client.get(card_url).status_code == 401

    # Lineage: where the version came from.
    version = stack.client.get("/models/carded/versions/1", headers=auth("alice")).json()
    lineage = version["lineage"]
    revision = (cache_repo_dir(hf_home, TINY_BERT) / "refs" / "main").read_text().strip()
    assert lineage["source"] == "trained" and lineage["job_id"] == job["id"]
    assert (lineage["base_model"], lineage["base_revision"]) == (TINY_BERT, revision)
    assert lineage["dataset"] == {"id": ds["id"], "sha256": ds["sha256"]}
    assert {"ftserve", "transformers", "torch", "datasets", "tokenizers"} <= set(lineage["libraries"])
    assert lineage["device"] == "cpu" and lineage["training_seconds"] > 0
    assert version["license"] == "mit"
    assert version["metrics"] == metrics
    assert httpx.get(f"{stack.base_url}/healthz").status_code == 200
