"""Promotion gates and evaluations with real processes (uvicorn, a Celery worker, PostgreSQL, Redis): a trained
version becomes `production` when no version holds it; a worse one (one optimizer step) leaves it, its job showing
both scores; serving follows the alias; an evaluation of the promoted version on the same data gives the numbers
the promotion compared, and those are the version's own validation metrics."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stack import Stack
from tests.tinymodels import TINY_BERT

HP = {"epochs": 6, "learning_rate": 5e-3, "batch_size": 16, "warmup_steps": 0, "max_length": 32, "seed": 7}
# A task a tiny randomly initialised BERT learns in a few dozen steps (the sentiment sentences of ../shared/data
# take it far longer): the word decides the label, the rest is noise words from the same vocabulary.
WORDS = {"positive": ("good", "great", "wonderful"), "negative": ("bad", "awful", "boring")}
NOISE = ("film", "story", "actors", "music", "plot", "ending", "scenes", "characters")


def _easy_csv(rows: int, *, seed: int) -> bytes:
    import random

    rng = random.Random(seed)
    lines = ["text,label"]
    for i in range(rows):
        label = ("positive", "negative")[i % 2]
        noise = rng.sample(NOISE, 3)
        lines.append(f"the {noise[0]} and {noise[1]} are {rng.choice(WORDS[label])} like the {noise[2]},{label}")
    return ("\n".join(lines) + "\n").encode()


def _train(stack: Stack, train: str, val: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    r = stack.client.post("/jobs", json={
        "task": "classification", "base_model": TINY_BERT, "dataset": {"id": train}, "validation": {"id": val},
        "model_name": "gated", "hyperparameters": hyperparameters,
        "promote": {"alias": "production", "metric": "f1_macro", "min_improvement": 0.0, "dataset": {"id": val}},
    })
    assert r.status_code == 201, r.text
    job = stack.wait_job(r.json()["id"], timeout=120)
    assert job["status"] == "succeeded", (job["error"], stack.logs("worker"))
    return job


def test_production_moves_only_for_a_better_version(pg_stack: Stack) -> None:
    stack = pg_stack
    train = stack.upload(content=_easy_csv(160, seed=1), filename="train.csv").json()["id"]
    val = stack.upload(content=_easy_csv(60, seed=2), filename="val.csv").json()["id"]

    first = _train(stack, train, val, HP)
    p1 = first["promotion"]
    assert (p1["alias"], p1["metric"], p1["moved"], p1["current"], p1["version"]) == (
        "production", "f1_macro", True, None, first["model"]["version"])
    # The validation set is the promotion set: the evaluation repeats training's final evaluation exactly.
    assert p1["new"] == pytest.approx(first["metrics"]["f1_macro"], abs=1e-9) and p1["new"] > 0.9
    events = stack.events(first["id"])
    kinds = [e["type"] for e in events]
    assert kinds.index("promotion") < len(kinds) - 1 and events[-1]["data"] == {"status": "succeeded"}
    assert stack.client.get("/models/gated").json()["aliases"] == {"production": 1}
    assert stack.client.post("/classify", json={"model": "gated@production", "inputs": ["fine"]}).json()[
        "model"] == "gated:1"

    second = _train(stack, train, val, {**HP, "max_steps": 1})
    p2 = second["promotion"]
    assert (p2["moved"], p2["version"], p2["current_version"]) == (False, 2, 1), p2
    assert p2["current"] == p1["new"] and p2["new"] < p2["current"], p2
    assert stack.client.get("/models/gated").json()["aliases"] == {"production": 1}
    for ref in ("gated@production", "gated"):
        r = stack.client.post("/classify", json={"model": ref, "inputs": ["a great film", "dull"]})
        assert r.status_code == 200 and r.json()["model"] == "gated:1", r.text

    # An evaluation of version 1 on the same data: the numbers the promotion compared.
    r = stack.client.post("/models/gated/versions/1/evaluations", json={"dataset": {"id": val}})
    assert r.status_code == 202, r.text
    stack.wait_job(r.json()["id"], timeout=60)
    ev = stack.client.get(f"/models/gated/versions/1/evaluations/{r.json()['id']}").json()
    assert ev["status"] == "succeeded", (ev["error"], stack.logs("worker"))
    assert ev["metrics"]["f1_macro"] == p2["current"]
    assert set(ev["metrics"]) == {"accuracy", "f1_macro", "eval_loss"}
    for key, value in ev["metrics"].items():
        assert value == pytest.approx(first["metrics"][key], abs=1e-6), key
    assert ev["dataset_sha256"] == stack.client.get(f"/datasets/{val}").json()["sha256"]
    card = (stack.data_dir / "models" / "gated" / "1" / "README.md").read_text()
    assert "## Evaluation results" in card and ev["id"] in card and repr(ev["metrics"]["f1_macro"]) in card
