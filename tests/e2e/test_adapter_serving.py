"""Adapters served on one shared base, with real processes (uvicorn, a Celery worker, PostgreSQL, Redis): five LoRA
classification adapters of one base (one of them with six labels where the others have two) and one full model of
the same base, requests for all six mixed under concurrency: every response equals its version's unbatched answer
(plain peft/transformers on the version, merged, fp32), `/metrics` shows one base loaded and forward passes that
served several adapters at once, and a sixth adapter trained while the others are being served is answered
without a restart of the API.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import fresh_pg_database
from tests.e2e.test_classification import csv_slice
from tests.e2e.test_lora import peft_models, snapshot
from tests.e2e.test_serving import post_many, validation_texts
from tests.reference import classify_reference
from tests.stack import Stack, free_port
from tests.tinymodels import TINY_BERT

ADAPTERS = ["ada", "adb", "adc", "add", "ade"]
MULTICLASS = "adc"  # six labels: a head of another width than the others', in the same batches


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str, shared_data: Path
           ) -> Iterator[Stack]:
    """A stack with five adapter versions of TINY_BERT and one full version, each version 1."""
    with fresh_pg_database() as url, Stack(
        data_dir=tmp_path_factory.mktemp("adapter_serving"),
        env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "FTSERVE_DATABASE_URL": url,
             "FTSERVE_BROKER_URL": redis_url, "FTSERVE_QUEUE": f"adapters_{free_port()}",
             "FTSERVE_MAX_BATCH_SIZE": "32", "FTSERVE_REQUEST_TIMEOUT_SECONDS": "60"},
    ) as stack:
        binary = stack.upload(content=csv_slice(shared_data / "classification" / "train.csv", 120),
                              filename="train.csv").json()["id"]
        multi = stack.upload(content=csv_slice(shared_data / "classification-multiclass" / "train.csv", 150),
                             filename="questions.csv").json()["id"]
        jobs = [submit(stack, name, multi if name == MULTICLASS else binary, seed=i)
                for i, name in enumerate(ADAPTERS)]
        jobs.append(submit(stack, "plain", binary, seed=0, lora=False))
        for job_id in jobs:
            job = stack.wait_job(job_id)
            assert job["status"] == "succeeded", (job["error"], stack.logs("worker"))
        stack.binary = binary  # type: ignore[attr-defined]
        yield stack


def submit(stack: Stack, name: str, dataset: str, *, seed: int, lora: bool = True) -> str:
    r = stack.client.post("/jobs", json={
        "task": "classification", "base_model": TINY_BERT, "dataset": {"id": dataset}, "model_name": name,
        **({"method": {"type": "lora"}} if lora else {}),
        "hyperparameters": {"max_steps": 3, "batch_size": 16, "learning_rate": 5e-3,
                            "seed": seed},
    })
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def merged_reference(stack: Stack, hf_home: Path, name: str, texts: list[str]) -> list[tuple[str, float]]:
    """Plain peft and transformers: the adapter's base with its config values, the adapter merged in, fp32, one
    unbatched forward per text."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = stack.data_dir / "models" / name / "1"
    model = peft_models(AutoModelForSequenceClassification, snapshot(hf_home, TINY_BERT), folder)
    model = model.merge_and_unload().eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for text in texts:
            probs = torch.softmax(model(**tok(text, return_tensors="pt", truncation=True)).logits[0], dim=-1)
            best = int(torch.argmax(probs))
            out.append((str(model.config.id2label[best]), float(probs[best])))
    return out


def check(responses: list[httpx.Response], refs: list[str], texts: list[str],
          references: dict[str, list[tuple[str, float]]], all_texts: list[str]) -> None:
    for response, ref, text in zip(responses, refs, texts, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["model"] == ref
        (best,) = response.json()["predictions"][0]
        label, score = references[ref][all_texts.index(text)]
        assert best["label"] == label and best["score"] == pytest.approx(score, abs=1e-4), (ref, text, best)


def test_adapters_share_one_base_and_forward_passes_and_answer_as_their_merged_models(
        served: Stack, hf_home: Path, shared_data: Path) -> None:
    texts = validation_texts(shared_data, 8)
    refs = [f"{name}:1" for name in [*ADAPTERS, "plain"]]
    references = {f"{name}:1": merged_reference(served, hf_home, name, texts) for name in ADAPTERS}
    references["plain:1"] = [classify_reference(served.data_dir / "models" / "plain" / "1", t) for t in texts]
    assert len({tuple(label for label, _ in r) + tuple(round(s, 3) for _, s in r) for r in references.values()}) \
        == len(refs)  # six versions that answer differently
    for ref in refs:  # loaded first: the mixed traffic below then runs on loaded versions
        assert served.client.post("/classify", json={"model": ref, "inputs": ["x"]}).status_code == 200
    label = f"hub:{TINY_BERT}@{snapshot(hf_home, TINY_BERT).name[:12]}/classification"
    count0 = served.metric("ftserve_batch_size_count", model=label)
    sum0 = served.metric("ftserve_batch_size_sum", model=label)

    bodies = [(ref, text) for text in texts for ref in refs] * 2  # 96 requests, one text each, all mixed
    responses = post_many(served, "/classify", [{"model": ref, "inputs": [text]} for ref, text in bodies])
    check(responses, [r for r, _ in bodies], [t for _, t in bodies], references, texts)

    assert served.metric("ftserve_loaded_bases") == 1  # five adapters, one base
    assert served.metric("ftserve_loaded_adapters") == 5 and served.metric("ftserve_loaded_models") == 1
    batches = served.metric("ftserve_batch_size_count", model=label) - count0
    inputs = served.metric("ftserve_batch_size_sum", model=label) - sum0
    assert inputs == 80 and batches < 80, (inputs, batches)  # the five adapters' requests shared forward passes
    v = served.client.get("/models/ada/versions/1").json()
    assert v["method"]["type"] == "lora" and v["base"]["resolved"] == f"hub:{TINY_BERT}"


def test_an_adapter_trained_while_serving_is_answered_without_a_restart(served: Stack, hf_home: Path,
                                                                         shared_data: Path) -> None:
    texts = validation_texts(shared_data, 4)
    api_pid = served.procs["api"].pid
    refs = [f"{name}:1" for name in ADAPTERS]
    failures: list[str] = []
    sent = [0]
    stop = threading.Event()

    def traffic() -> None:  # the other adapters keep being served meanwhile
        with httpx.Client(base_url=served.base_url, timeout=60) as client:
            while not stop.is_set():
                ref = refs[sent[0] % len(refs)]
                r = client.post("/classify", json={"model": ref, "inputs": texts[:2]})
                sent[0] += 1
                if r.status_code != 200 or r.json()["model"] != ref:
                    failures.append(r.text)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        job = served.wait_job(submit(served, "adf", served.binary, seed=9))  # type: ignore[attr-defined]
        assert job["status"] == "succeeded", job["error"]
        r = served.client.post("/classify", json={"model": "adf", "inputs": texts})  # servable once registered
        assert r.status_code == 200 and r.json()["model"] == "adf:1", r.text
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures and sent[0] > 0, failures[:3]
    assert served.procs["api"].pid == api_pid and served.alive("api")
    for (best,), (label, score) in zip(r.json()["predictions"], merged_reference(served, hf_home, "adf", texts),
                                       strict=True):
        assert best["label"] == label and best["score"] == pytest.approx(score, abs=1e-4)
    assert served.metric("ftserve_loaded_bases") == 1 and served.metric("ftserve_loaded_adapters") == 6
