"""The files in examples/ (the README's walk-through data and job specs) upload and submit as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {"sentiment.json": "sentiment.csv", "qa.json": "qa.jsonl", "summaries.json": "summaries.jsonl",
            "stories.json": "stories.txt"}


def test_every_example_is_licensed_and_used() -> None:
    assert "CC0" in (REPO / "examples" / "NOTICE").read_text()
    assert sorted(p.name for p in (REPO / "examples" / "jobs").iterdir()) == sorted(EXAMPLES)
    assert sorted(p.name for p in (REPO / "examples").iterdir() if p.is_file() and p.name != "NOTICE") == sorted(
        EXAMPLES.values())


@pytest.mark.parametrize(("spec_file", "data_file"), sorted(EXAMPLES.items()))
def test_examples_upload_and_submit(api: TestClient, monkeypatch: pytest.MonkeyPatch, spec_file: str,
                                    data_file: str) -> None:
    sent: list[str] = []
    monkeypatch.setattr("api.routes.jobs.send_job", sent.append)
    path = REPO / "examples" / data_file
    ds = api.post("/datasets", files={"file": (data_file, path.read_bytes())})
    assert ds.status_code == 201, ds.text
    assert ds.json()["num_rows"] >= 24  # a .txt has one document per blank-line-separated block
    spec = json.loads((REPO / "examples" / "jobs" / spec_file).read_text())
    job = api.post("/jobs", json={**spec, "dataset": {"id": ds.json()["id"]}})
    assert job.status_code == 201, job.text
    assert sent == [job.json()["id"]] and job.json()["task"] == spec["task"]
