"""Summarization end to end: upload → seq2seq job → Celery worker → registry → /summarize, real processes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tests.reference import losses
from tests.stack import Stack
from tests.tinymodels import TINY_T5

MODEL = "digest"
# eval_steps = max_steps: one evaluation with generation at the end keeps the run short.
HP = {"max_steps": 120, "batch_size": 8, "learning_rate": 1e-2, "warmup_steps": 0, "max_length": 128,
      "max_target_length": 24,
      "logging_steps": 2, "eval_steps": 120, "seed": 3}


def jsonl_slice(path: Path, rows: int) -> tuple[bytes, list[dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        records = [json.loads(line) for _, line in zip(range(rows), f, strict=False)]
    return "".join(json.dumps(r) + "\n" for r in records).encode(), records


def summarize_reference(version_dir: Path, documents: list[str], **gen: Any) -> list[str]:
    """Plain transformers, one unbatched `generate` per document, prefix read from training_params.json."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    prefix = json.loads((version_dir / "training_params.json").read_text())["serving"]["prefix"]
    max_length = json.loads((version_dir / "training_params.json").read_text())["serving"]["max_length"]
    tok = AutoTokenizer.from_pretrained(version_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(version_dir).eval()
    out = []
    for doc in documents:
        enc = tok(prefix + doc, return_tensors="pt", truncation=True, max_length=max_length)
        with torch.no_grad():
            ids = model.generate(**enc, do_sample=False, **gen)
        out.append(tok.decode(ids[0], skip_special_tokens=True).strip())
    return out


def test_summarization_end_to_end(pg_stack: Stack, shared_data: Path) -> None:
    data, records = jsonl_slice(shared_data / "summarization" / "train.jsonl", 120)
    r = pg_stack.upload(content=data, filename="news.jsonl")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert set(ds["columns"]) >= {"document", "summary"} and ds["num_rows"] == 120
    r = pg_stack.client.post("/jobs", json={
        "task": "summarization", "base_model": TINY_T5, "dataset": {"id": ds["id"]}, "model_name": MODEL,
        "hyperparameters": HP,
    })
    assert r.status_code == 201, r.text
    job = pg_stack.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", (job["error"], pg_stack.logs("worker"))
    metrics = job["metrics"]
    assert set(metrics) >= {"rouge1", "rouge2", "rougeL", "rougeLsum", "eval_loss", "train_loss"}, metrics
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert 0.0 <= metrics[key] <= 1.0, metrics
    assert math.isfinite(metrics["eval_loss"]) and math.isfinite(metrics["train_loss"])
    loss = losses(pg_stack.events(job["id"]))  # asserts every logged loss is finite
    assert len(loss) >= 4, loss

    version_dir = pg_stack.data_dir / "models" / MODEL / str(job["model"]["version"])
    params = json.loads((version_dir / "training_params.json").read_text())
    # A T5 model with no prefix given gets T5's task prefix; serving reads it from the same file.
    assert params["serving"]["prefix"] == "summarize: "
    assert not list(version_dir.glob("*.bin")), "no pickles in a served artifact"

    documents = [records[0]["document"], records[1]["document"]]
    for beams in (1, 2):
        gen = {"max_new_tokens": 16, "num_beams": beams, "no_repeat_ngram_size": 0}
        r = pg_stack.client.post("/summarize", json={"model": MODEL, "inputs": documents, **gen})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == f"{MODEL}:{job['model']['version']}"
        assert len(body["summaries"]) == 2 and all(isinstance(s, str) for s in body["summaries"])
        # Batched serving must equal one plain-transformers run per document.
        assert body["summaries"] == summarize_reference(version_dir, documents, **gen), beams

    # The contract's defaults: greedy (num_beams 1), no n-gram blocking.
    r = pg_stack.client.post("/summarize", json={"model": MODEL, "inputs": documents, "max_new_tokens": 16})
    assert r.json()["summaries"] == summarize_reference(version_dir, documents, max_new_tokens=16, num_beams=1,
                                                        no_repeat_ngram_size=0)

    r = pg_stack.client.post("/summarize", json={"model": MODEL, "inputs": documents[0], "max_new_tokens": 600})
    assert r.status_code == 422 and "max_new_tokens" in r.json()["error"]["message"], r.text


def test_summarization_rejects_missing_and_empty_summaries(pg_stack: Stack) -> None:
    rows = [{"article": "The council met on Monday.", "summary": "Council met."}]
    ds = pg_stack.upload(content=(json.dumps(rows[0]) + "\n").encode(), filename="nosummary.jsonl").json()
    r = pg_stack.client.post("/jobs", json={
        "task": "summarization", "base_model": TINY_T5, "dataset": {"id": ds["id"]},
        "columns": {"document": "article", "summary": "abstract"},
    })
    assert r.status_code == 422, r.text
    assert "abstract" in r.json()["error"]["message"]

    rows = [{"document": f"Story number {i}.", "summary": "" if i == 3 else f"Story {i}."} for i in range(1, 6)]
    ds = pg_stack.upload(content="".join(json.dumps(x) + "\n" for x in rows).encode(), filename="empty.jsonl").json()
    r = pg_stack.client.post("/jobs", json={"task": "summarization", "base_model": TINY_T5,
                                            "dataset": {"id": ds["id"]}})
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "row 3" in message and "'summary'" in message, message
