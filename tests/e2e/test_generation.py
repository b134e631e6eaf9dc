"""Causal-LM generation end to end: .txt corpus → job → worker → registry → /generate (and streaming)."""

from __future__ import annotations

import json
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.reference import losses
from tests.stack import Stack
from tests.tiny_gpt2 import TINY_GPT2


def reference_generate(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    return str(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


def sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in response.text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_generation_end_to_end(pg_stack: Stack, shared_data: Path) -> None:
    corpus = (shared_data / "generation" / "train.txt").read_text(encoding="utf-8")[:30000]
    corpus = corpus[: corpus.rfind("\n\n")]
    ds = pg_stack.upload(content=corpus.encode(), filename="shakespeare.txt").json()
    assert ds["columns"] == ["text"] and ds["num_rows"] > 50
    r = pg_stack.client.post("/jobs", json={
        "task": "generation", "base_model": TINY_GPT2, "dataset": {"id": ds["id"]}, "model_name": "bard",
        "hyperparameters": {"max_steps": 30, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 0,
                            "block_size": 64,
                            "logging_steps": 2, "eval_steps": 30},
    })
    assert r.status_code == 201, r.text
    job = pg_stack.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", (job["error"], pg_stack.logs("worker"))
    metrics = job["metrics"]
    assert set(metrics) >= {"perplexity", "eval_loss", "train_loss", "train_runtime_s"}
    assert metrics["perplexity"] == __import__("pytest").approx(math.exp(metrics["eval_loss"]), rel=1e-6)
    loss = losses(pg_stack.events(job["id"]))
    assert len(loss) >= 4 and sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss
    version_dir = pg_stack.data_dir / "models" / "bard" / str(job["model"]["version"])

    prompts = ["ROMEO:\n", "First Citizen:\nWe are"]
    body = {"model": "bard", "inputs": prompts, "max_new_tokens": 16, "min_new_tokens": 16}
    out = pg_stack.client.post("/generate", json=body).json()
    assert out["model"] == job["model"]["ref"] and len(out["generations"]) == 2
    for prompt, gen in zip(prompts, out["generations"], strict=True):
        assert gen["text"] == reference_generate(version_dir, prompt, 16)
        assert gen["tokens"] == 16 and gen["finish_reason"] == "length"

    # A stop sequence ends the text and is not part of it.
    full = out["generations"][0]["text"]
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), full
    cut = pg_stack.client.post("/generate", json={**body, "inputs": None, "prompt": prompts[0], "stop": [stop]})
    gen = cut.json()["generations"][0]
    assert gen["finish_reason"] == "stop" and gen["text"] == full[: full.find(stop)]

    # The same seed and parameters give the same sampled text.
    sample = {"model": "bard", "prompt": prompts[0], "max_new_tokens": 12, "do_sample": True, "temperature": 1.5,
              "seed": 1234}
    a = pg_stack.client.post("/generate", json=sample).json()["generations"][0]["text"]
    b = pg_stack.client.post("/generate", json=sample).json()["generations"][0]["text"]
    assert a == b
    # … also when other sampled requests run at the same time; and other seeds give other texts.
    with ThreadPoolExecutor(max_workers=6) as pool:
        seeds = [1234, 1, 2, 3, 1234, 4]
        texts = list(pool.map(lambda seed: httpx.post(f"{pg_stack.base_url}/generate", timeout=60,
                                                      json={**sample, "seed": seed}).json()["generations"][0]["text"],
                              seeds))
    assert texts[0] == texts[4] == a, texts
    assert len({a, *texts[1:4], texts[5]}) == 5, texts

    # Streaming: token chunks, then `done` with the full text.
    r = pg_stack.client.post("/generate", json={**body, "inputs": None, "prompt": prompts[0], "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r)
    assert events[-1][0] == "done" and all(kind == "token" for kind, _ in events[:-1]) and len(events) >= 2
    assert "".join(d["text"] for _, d in events[:-1]) == events[-1][1]["text"] == full
    assert events[-1][1]["finish_reason"] == "length" and events[-1][1]["tokens"] == 16


def test_generation_request_errors(pg_stack: Stack) -> None:
    c = pg_stack.client
    r = c.post("/generate", json={"prompt": "x", "max_new_tokens": 600})
    assert r.status_code == 422 and "max_new_tokens" in r.json()["error"]["message"]
    r = c.post("/generate", json={"inputs": ["a", "b"], "stream": True})
    assert r.status_code == 422 and "one prompt" in r.json()["error"]["message"]
    r = c.post("/generate", json={"model": "sentiment", "prompt": "x"})
    assert r.status_code in (404, 422)
    r = c.post("/generate", json={"model": "no-such-model", "prompt": "x", "stream": True})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_client_leaving_a_stream_stops_its_generation(pg_stack: Stack, shared_data: Path) -> None:
    corpus = (shared_data / "generation" / "train.txt").read_text(encoding="utf-8")[:6000]
    ds = pg_stack.upload(content=corpus.encode(), filename="leave.txt").json()
    r = pg_stack.client.post("/jobs", json={
        "task": "generation", "base_model": TINY_GPT2, "dataset": {"id": ds["id"]}, "model_name": "leaver",
        "hyperparameters": {"max_steps": 1, "batch_size": 2, "block_size": 32},
    })
    job = pg_stack.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", job["error"]

    def cancelled_count() -> float:
        return pg_stack.metric("ftserve_generations_cancelled_total", model="leaver:1")

    assert cancelled_count() == 0
    wanted = 240  # the tiny model's context is 256 positions
    body = {"model": "leaver", "prompt": "ROMEO:", "max_new_tokens": wanted, "min_new_tokens": wanted, "stream": True}
    with httpx.Client(base_url=pg_stack.base_url, timeout=60) as client, \
            client.stream("POST", "/generate", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: token"):
                break  # leave after the first token: closing the client drops the connection
    deadline = time.monotonic() + 30
    while cancelled_count() < 1:
        assert time.monotonic() < deadline, pg_stack.logs("api")[-3000:]
        time.sleep(0.1)
    logged = re.findall(r"generation cancelled: the client went away after (\d+) new tokens .*leaver:1",
                        pg_stack.logs("api"))
    assert len(logged) == 1 and int(logged[0]) < wanted, logged
    # The server goes on: the same model still answers in full.
    out = pg_stack.client.post("/generate", json={**body, "stream": False, "max_new_tokens": 8, "min_new_tokens": 8})
    assert out.status_code == 200 and out.json()["generations"][0]["tokens"] == 8
