"""Extractive QA end to end: upload SQuAD-style JSONL → job → worker → registry → /answer, real processes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.reference import losses
from tests.stack import Stack
from tests.tinymodels import TINY_BERT


def jsonl_slice(path: Path, rows: int) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(rows), f, strict=False)]


def brute_force_answer(model_dir: Path, question: str, context: str) -> tuple[str, float, int, int]:
    """Plain transformers, one unbatched forward per window; every valid span of every window."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    serving = json.loads((model_dir / "training_params.json").read_text())["serving"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    enc = tok(question, context, truncation="only_second", max_length=serving["max_length"],
              stride=serving["doc_stride"], return_overflowing_tokens=True, return_offsets_mapping=True)
    best = ("", -1.0, 0, 0)
    for w in range(len(enc["input_ids"])):
        ids = {k: torch.tensor([enc[k][w]]) for k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            out = model(**ids)
        ps = torch.softmax(out.start_logits[0].double(), -1).tolist()
        pe = torch.softmax(out.end_logits[0].double(), -1).tolist()
        seq = enc.sequence_ids(w)
        offsets = enc["offset_mapping"][w]
        ctx = [i for i, s in enumerate(seq) if s == 1]
        for s in ctx:
            for e in ctx:
                if e < s or e - s + 1 > serving["max_answer_length"]:
                    continue
                score = ps[s] * pe[e]
                if score > best[1]:
                    a, b = offsets[s][0], offsets[e][1]
                    best = (context[a:b], score, a, b)
    return best


def test_question_answering_end_to_end(pg_stack: Stack, shared_data: Path) -> None:
    rows = jsonl_slice(shared_data / "qa" / "train.jsonl", 160)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    ds = pg_stack.upload(content=data, filename="squad.jsonl").json()
    assert set(ds["columns"]) >= {"question", "context", "answers"}
    r = pg_stack.client.post("/jobs", json={
        "task": "question-answering", "base_model": TINY_BERT, "dataset": {"id": ds["id"]}, "model_name": "squad",
        "hyperparameters": {"max_steps": 30, "batch_size": 16, "learning_rate": 2e-3, "warmup_steps": 0,
                            "max_length": 96,
                            "doc_stride": 32, "max_answer_length": 20, "logging_steps": 2, "eval_steps": 30},
    })
    assert r.status_code == 201, r.text
    job = pg_stack.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", (job["error"], pg_stack.logs("worker"))
    assert set(job["metrics"]) >= {"exact_match", "f1", "eval_loss", "train_loss", "train_runtime_s"}
    assert 0 <= job["metrics"]["exact_match"] <= job["metrics"]["f1"] <= 1
    loss = losses(pg_stack.events(job["id"]))
    assert len(loss) >= 4 and all(math.isfinite(x) for x in loss)
    version_dir = pg_stack.data_dir / "models" / "squad" / str(job["model"]["version"])

    held_out = jsonl_slice(shared_data / "qa" / "validation.jsonl", 3)
    items = [{"question": r["question"], "context": r["context"]} for r in held_out]
    # A context longer than the window is read in several windows.
    assert max(len(r["context"]) for r in held_out) > 400
    body = pg_stack.client.post("/answer", json={"model": "squad", "inputs": items}).json()
    assert body["model"] == job["model"]["ref"] and len(body["answers"]) == 3
    single = pg_stack.client.post("/answer", json={"model": "squad", **items[0]}).json()
    assert len(single["answers"]) == 1
    for item, got in zip(items, body["answers"], strict=True):
        assert item["context"][got["start"]:got["end"]] == got["answer"]
        text, score, start, end = brute_force_answer(version_dir, item["question"], item["context"])
        assert (got["answer"], got["start"], got["end"]) == (text, start, end)
        assert got["score"] == pytest.approx(score, abs=1e-4)
    assert single["answers"][0]["answer"] == body["answers"][0]["answer"]


def test_question_answering_rejects_misaligned_answers(pg_stack: Stack) -> None:
    rows = [
        {"question": "Who?", "context": "Ada wrote it.", "answers": {"text": ["Ada"], "answer_start": [0]}},
        {"question": "What?", "context": "Ada wrote it.", "answers": {"text": ["wrote"], "answer_start": [0]}},
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    ds = pg_stack.upload(content=data, filename="bad_squad.jsonl").json()
    r = pg_stack.client.post("/jobs", json={"task": "question-answering", "base_model": TINY_BERT,
                                            "dataset": {"id": ds["id"]}})
    assert r.status_code == 422, r.text
    assert "row 2" in r.json()["error"]["message"] and "answer_start 0" in r.json()["error"]["message"]
    r = pg_stack.client.post("/answer", json={"model": "squad", "question": "Who?"})
    assert r.status_code == 422 and "context" in r.json()["error"]["message"]
