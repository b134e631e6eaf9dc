"""LoRA adapters end to end, one tiny training per task with real processes (uvicorn, a Celery worker, PostgreSQL,
Redis): the job succeeds with `method: lora`, the version folder holds the adapter and head weights only (a small
fraction of the base's), the registry and the card say it is an adapter and name its base, and loading base +
adapter with plain peft gives the same outputs merged (`merge_and_unload`) as unmerged. What the API serves for the
version — the adapter on its shared base, unmerged (inference/adapters.py) — equals that merged reference: scores
within 1e-4, the same spans, the same greedy text. An adapter version exports as a merged full model
(`?merged=true`) that imports and serves as a full version with the adapter's answers.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.hfcache import cache_repo_dir
from tests.e2e.test_classification import csv_slice
from tests.e2e.test_question_answering import jsonl_slice
from tests.reference import losses
from tests.stack import Stack
from tests.tiny_gpt2 import TINY_GPT2
from tests.tinymodels import TINY_BERT, TINY_T5, save_tiny_classifier

ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "training_params.json",
                 "metrics.json", "README.md"}


def snapshot(hf_home: Path, repo_id: str) -> Path:
    repo = cache_repo_dir(hf_home, repo_id)
    return repo / "snapshots" / (repo / "refs" / "main").read_text().strip()


def submit(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    r = stack.client.post("/jobs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["method"]["type"] == "lora"
    job = stack.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", (job["error"], stack.logs("worker"))
    return job


def check_adapter_version(stack: Stack, job: dict[str, Any], *, base_dir: Path, base_resolved: str,
                          metrics: set[str], targets: list[str], heads: list[str]) -> Path:
    """The job, its version folder, the registry's record and the card of a LoRA version."""
    name, version = job["model"]["name"], job["model"]["version"]
    assert set(job["metrics"]) >= metrics | {"train_loss", "train_runtime_s"}, job["metrics"]
    # The job echoes the method it used: the architecture's default target_modules filled in by the worker.
    assert job["method"] == {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": targets}
    loss = losses(stack.events(job["id"]))
    assert loss, "no training loss logged"
    logs = [e for e in stack.events(job["id"]) if e["type"] == "log"]
    assert any(e["message"].startswith("LoRA: r=8") and e["data"]["trainable_parameters"] > 0 for e in logs)
    assert any(e["message"].startswith("precision: fp32") and e["data"]["precision"] == "fp32" for e in logs)

    folder = stack.data_dir / "models" / name / str(version)
    files = {p.name for p in folder.iterdir()}
    assert files >= ADAPTER_FILES, files
    assert not files & {"model.safetensors", "config.json", "pytorch_model.bin"}, files
    assert not list(folder.glob("*.bin")), "no pickles in a version"
    # Adapter and head only: a small fraction of the base's weights (a full version is at least that big).
    adapter_bytes = (folder / "adapter_model.safetensors").stat().st_size
    base_bytes = (base_dir / "model.safetensors").stat().st_size
    assert adapter_bytes < base_bytes / 4, (adapter_bytes, base_bytes)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == sorted(targets)
    assert (config.get("modules_to_save") or []) >= heads

    v = stack.client.get(f"/models/{name}/versions/{version}").json()
    assert v["method"] == {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": targets,
                           "modules_to_save": heads}
    assert v["base"]["resolved"] == base_resolved and v["metrics"] == job["metrics"]
    card = stack.client.get(f"/models/{name}/versions/{version}/card").text
    front = card.split("---")[1]
    assert "library_name: peft" in front and "- lora" in front, front
    assert "LoRA adapter" in card and "PeftModel.from_pretrained" in card
    kind, _, rest = base_resolved.partition(":")
    if kind == "hub":
        assert v["base"]["hub"] == rest and v["base"]["revision"] == base_dir.name  # the cached snapshot's commit
        assert f"base_model: {rest}" in front and f"base_model:adapter:{rest}" in front
    else:
        assert v["base"]["version"] == rest and v["base"]["hub"] is None
    return folder


def on_its_base(stack: Stack, request: Callable[[], httpx.Response]) -> dict[str, Any]:
    """The response to an adapter version's first request, checking that it was served on a shared base: the
    adapter cache and the loaded bases grew by one (the base is new: each test here has its own), the cache of full
    versions did not."""
    before = [stack.metric(m) for m in ("ftserve_loaded_adapters", "ftserve_loaded_bases", "ftserve_loaded_models")]
    r = request()
    assert r.status_code == 200, r.text
    after = [stack.metric(m) for m in ("ftserve_loaded_adapters", "ftserve_loaded_bases", "ftserve_loaded_models")]
    assert after == [before[0] + 1, before[1] + 1, before[2]], (before, after)
    out: dict[str, Any] = r.json()
    return out


def peft_models(auto: Any, base_dir: Path, folder: Path) -> Any:
    """Plain peft/transformers, no ftserve code: the base with the task's config values, the adapter on top."""
    from peft import PeftModel

    overrides = json.loads((folder / "training_params.json").read_text())["adapter"]["model_config"]
    if "id2label" in overrides:
        overrides["id2label"] = {int(k): v for k, v in overrides["id2label"].items()}
    base = auto.from_pretrained(base_dir, **overrides)
    return PeftModel.from_pretrained(base, folder).eval()


def merged_equals_unmerged(model: Any, inputs: dict[str, Any], outputs: tuple[str, ...]) -> Any:
    """The forward outputs of the unmerged adapter model and of `merge_and_unload()` agree within 1e-4; returns
    the merged model."""
    import torch

    with torch.no_grad():
        unmerged = model(**inputs)
        merged_model = model.merge_and_unload().eval()
        merged = merged_model(**inputs)
    for key in outputs:
        a, b = getattr(unmerged, key).float(), getattr(merged, key).float()
        assert torch.allclose(a, b, atol=1e-4), (key, (a - b).abs().max())
    return merged_model


def test_lora_classification_on_a_registered_base(pg_stack: Stack, shared_data: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    stack = pg_stack
    base_src = save_tiny_classifier(tmp_path / "tiny")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(base_src.iterdir()):
            tar.add(path, arcname=f"model/{path.name}")
    r = stack.client.post("/models/lorabase/versions", files={"file": ("tiny.tar.gz", buf.getvalue())})
    assert r.status_code == 201, r.text
    base_dir = stack.data_dir / "models" / "lorabase" / "1"

    ds = stack.upload(content=csv_slice(shared_data / "classification" / "train.csv", 120),
                      filename="train.csv").json()["id"]
    # A layer the base does not have is a 422 at submit that lists its layers.
    r = stack.client.post("/jobs", json={"task": "classification", "base_model": "lorabase:1", "dataset": {"id": ds},
                                         "method": {"type": "lora", "target_modules": ["q_proj"]}})
    assert r.status_code == 422 and "'q_proj' is not a layer of lorabase:1" in r.text and "query" in r.text, r.text
    job = submit(stack, {"task": "classification", "base_model": "lorabase:1", "dataset": {"id": ds},
                         "model_name": "lorasent", "method": {"type": "lora"},
                         "hyperparameters": {"max_steps": 8, "batch_size": 16, "learning_rate": 5e-3,
                                             "logging_steps": 2, "max_length": 32}})
    assert job["base_model_resolved"] == "model:lorabase:1"
    folder = check_adapter_version(stack, job, base_dir=base_dir, base_resolved="model:lorabase:1",
                                   metrics={"accuracy", "f1_macro", "eval_loss"}, targets=["query", "value"],
                                   heads=["classifier"])
    # Same label set as the base: its head was kept (and trained, saved with the adapter).
    assert not [e for e in stack.events(job["id"]) if "head re-created" in e["message"]]

    texts = ["a great and moving film", "dull , lifeless and far too long"]
    tok = AutoTokenizer.from_pretrained(folder)
    model = peft_models(AutoModelForSequenceClassification, base_dir, folder)
    merged = merged_equals_unmerged(model, tok(texts, return_tensors="pt", padding=True), ("logits",))
    served = on_its_base(stack, lambda: stack.client.post("/classify", json={"model": job["model"]["ref"],
                                                                             "inputs": texts}))
    for text, pred in zip(texts, served["predictions"], strict=True):
        with torch.no_grad():
            probs = torch.softmax(merged(**tok(text, return_tensors="pt")).logits[0], -1)
        best = int(torch.argmax(probs))
        assert pred[0]["label"] == merged.config.id2label[best]
        assert pred[0]["score"] == pytest.approx(float(probs[best]), abs=1e-4)

    # An evaluation of the adapter version runs base + adapter and gives the metrics training reports.
    r = stack.client.post(f"/models/lorasent/versions/{job['model']['version']}/evaluations",
                          json={"dataset": {"id": ds}})
    assert r.status_code == 202, r.text
    evaluation = stack.wait_job(r.json()["id"])
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert set(evaluation["result"]["metrics"]) == {"accuracy", "f1_macro", "eval_loss"}

    # Its archive carries the adapter, not base weights.
    r = stack.client.get(f"/models/lorasent/versions/{job['model']['version']}/archive")
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert names >= ADAPTER_FILES and "model.safetensors" not in names

    # Merged: a full model (the base with the adapter merged in) whose card names the base; imported as a version
    # of its own, it is a full version and answers as the adapter does.
    r = stack.client.get(f"/models/lorasent/versions/{job['model']['version']}/archive", params={"merged": "true"})
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        members = {Path(n).name: n for n in tar.getnames()}
        card_text = tar.extractfile(members["README.md"]).read().decode()  # type: ignore[union-attr]
        params = json.loads(tar.extractfile(members["training_params.json"]).read())  # type: ignore[union-attr]
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "metrics.json"} <= set(members)
    assert not {"adapter_model.safetensors", "adapter_config.json"} & set(members), members
    assert all(n.startswith(f"lorasent-{job['model']['version']}-merged/") for n in members.values())
    assert params["method"] == "full" and params["merged_from"]["version"] == job["model"]["ref"]
    assert "lorabase:1" in card_text and "merged into its base" in card_text
    assert "library_name: transformers" in card_text
    r = stack.client.post("/models/lorasent-merged/versions", files={"file": ("merged.tar.gz", r.content)})
    assert r.status_code == 201, r.text
    assert stack.client.get("/models/lorasent-merged/versions/1").json()["method"] == "full"
    again = stack.client.post("/classify", json={"model": "lorasent-merged:1", "inputs": texts}).json()
    for ours, theirs in zip(again["predictions"], served["predictions"], strict=True):
        assert ours[0]["label"] == theirs[0]["label"]
        assert ours[0]["score"] == pytest.approx(theirs[0]["score"], abs=1e-4)

    # The base cannot be deleted while the adapter needs it; an adapter is no base to train from.
    r = stack.client.delete("/models/lorabase/versions/1")
    assert r.status_code == 409 and f"{job['model']['ref']} is a LoRA adapter" in r.text, r.text
    r = stack.client.post("/jobs", json={"task": "classification", "base_model": job["model"]["ref"],
                                         "dataset": {"id": ds}})
    assert r.status_code == 422 and "is a LoRA adapter version" in r.text, r.text


def test_lora_question_answering(pg_stack: Stack, hf_home: Path, shared_data: Path) -> None:
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    stack = pg_stack
    rows = jsonl_slice(shared_data / "qa" / "train.jsonl", 80)
    ds = stack.upload(content="".join(json.dumps(r) + "\n" for r in rows).encode(), filename="squad.jsonl")
    job = submit(stack, {"task": "question-answering", "base_model": TINY_BERT, "dataset": {"id": ds.json()["id"]},
                         "model_name": "lorasquad", "method": {"type": "lora"},
                         "hyperparameters": {"max_steps": 6, "batch_size": 16, "learning_rate": 5e-3,
                                             "max_length": 96, "doc_stride": 32, "logging_steps": 2}})
    base_dir = snapshot(hf_home, TINY_BERT)
    folder = check_adapter_version(stack, job, base_dir=base_dir, base_resolved=f"hub:{TINY_BERT}",
                                   metrics={"exact_match", "f1", "eval_loss"}, targets=["query", "value"],
                                   heads=["qa_outputs"])
    question, context = rows[0]["question"], rows[0]["context"]
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(question, context, truncation="only_second", max_length=96, return_tensors="pt")
    merged = merged_equals_unmerged(peft_models(AutoModelForQuestionAnswering, base_dir, folder), dict(enc),
                                    ("start_logits", "end_logits"))
    served = on_its_base(stack, lambda: stack.client.post("/answer", json={
        "model": job["model"]["ref"], "question": question, "context": context[:200]}))["answers"][0]
    # The served span is the best span of the merged model over the (single) window.
    enc = tok(question, context[:200], truncation="only_second", max_length=96, return_offsets_mapping=True,
              return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0]
    with torch.no_grad():
        out = merged(**enc)
    ps, pe = torch.softmax(out.start_logits[0].double(), -1), torch.softmax(out.end_logits[0].double(), -1)
    ctx = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]
    score, s, e = max((float(ps[s] * pe[e]), s, e) for s in ctx for e in ctx if s <= e < s + 30)
    assert (served["start"], served["end"]) == (int(offsets[s][0]), int(offsets[e][1]))
    assert served["score"] == pytest.approx(score, abs=1e-4)


def test_lora_summarization(pg_stack: Stack, hf_home: Path, shared_data: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    stack = pg_stack
    rows = jsonl_slice(shared_data / "summarization" / "train.jsonl", 60)
    ds = stack.upload(content="".join(json.dumps(r) + "\n" for r in rows).encode(), filename="sum.jsonl")
    job = submit(stack, {"task": "summarization", "base_model": TINY_T5, "dataset": {"id": ds.json()["id"]},
                         "model_name": "lorasum", "method": {"type": "lora"},
                         "hyperparameters": {"max_steps": 6, "batch_size": 8, "learning_rate": 5e-3,
                                             "max_length": 128, "max_target_length": 16, "logging_steps": 2}})
    base_dir = snapshot(hf_home, TINY_T5)
    folder = check_adapter_version(stack, job, base_dir=base_dir, base_resolved=f"hub:{TINY_T5}",
                                   metrics={"rouge1", "rougeLsum", "eval_loss"}, targets=["q", "v"], heads=[])
    assert (folder / "generation_config.json").is_file()
    tok = AutoTokenizer.from_pretrained(folder)
    document = "summarize: " + rows[0]["document"]
    enc = tok([document], truncation=True, max_length=128, return_tensors="pt")
    labels = tok(text_target=[rows[0]["summary"]], return_tensors="pt")["input_ids"]
    merged = merged_equals_unmerged(peft_models(AutoModelForSeq2SeqLM, base_dir, folder), {**enc, "labels": labels},
                                    ("logits",))
    expected = tok.batch_decode(merged.generate(**enc, max_new_tokens=12, do_sample=False),
                                skip_special_tokens=True)[0].strip()
    served = on_its_base(stack, lambda: stack.client.post("/summarize", json={
        "model": job["model"]["ref"], "inputs": rows[0]["document"], "max_new_tokens": 12}))
    assert served["summaries"] == [expected]


def test_lora_generation(pg_stack: Stack, hf_home: Path, shared_data: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stack = pg_stack
    text = (shared_data / "generation" / "train.txt").read_text(encoding="utf-8")
    corpus = "\n\n".join(text.split("\n\n")[:120]).encode()
    ds = stack.upload(content=corpus, filename="corpus.txt")
    job = submit(stack, {"task": "generation", "base_model": TINY_GPT2, "dataset": {"id": ds.json()["id"]},
                         "model_name": "lorabard", "method": {"type": "lora"},
                         "hyperparameters": {"max_steps": 6, "batch_size": 8, "learning_rate": 5e-3,
                                             "block_size": 64, "logging_steps": 2}})
    base_dir = snapshot(hf_home, TINY_GPT2)
    folder = check_adapter_version(stack, job, base_dir=base_dir, base_resolved=f"hub:{TINY_GPT2}",
                                   metrics={"perplexity", "eval_loss"}, targets=["c_attn"], heads=[])
    tok = AutoTokenizer.from_pretrained(folder)
    prompt = "ROMEO:\n"
    enc = tok([prompt], return_tensors="pt")
    merged = merged_equals_unmerged(peft_models(AutoModelForCausalLM, base_dir, folder), dict(enc), ("logits",))
    ids = merged.generate(**enc, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                          pad_token_id=tok.eos_token_id)
    expected = tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    served = on_its_base(stack, lambda: stack.client.post("/generate", json={
        "model": job["model"]["ref"], "prompt": prompt, "max_new_tokens": 12, "min_new_tokens": 12}))
    assert served["generations"][0]["text"] == expected
