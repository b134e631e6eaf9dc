"""LoRA adapter versions served on shared bases (inference/adapters.py), through InferenceService with tiny models and
adapters made with plain peft (random LoRA weights and heads, so that every adapter answers differently): the
adapters of one base load it once, requests for several adapters share forward passes (one batch mixing them, heads
of other label counts included), every answer equals its adapter's merged model run alone with plain peft and
transformers (fp32), the adapter cache evicts least recently used adapters and the base goes with the last one, and
generation (decode loop per adapter, or one `generate` mixing adapters) and summarization give the merged models'
greedy texts."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.hfcache import cache_repo_dir
from core.settings import Settings
from inference import metrics
from inference.service import InferenceService, Resolved
from tests.tiny_gpt2 import TINY_GPT2
from tests.tinymodels import TINY_T5, save_tiny_classifier

TEXTS = ["the film was good", "a dull and bad movie", "it is great", "the movie was bad and dull to the end",
         "good", "a great film of the movie"]
PROMPTS = ["the king", "ROMEO:\nwhat light through yonder window", "JULIET:", "O"]
DOCUMENTS = ["the council met on monday and agreed a new budget for the schools of the county",
             "heavy rain flooded the roads near the river and the police closed the bridge for the night"]


def gauge(g: Any) -> float:
    return float(g._value.get())


def make_adapter(*, models: Path, base: str, name: str, task: str, auto: Any, targets: list[str], seed: int,
                 heads: list[str] | None = None, task_type: str | None = None,
                 labels: list[str] | None = None, serving: dict[str, Any] | None = None) -> Path:
    """An adapter version folder as a LoRA job leaves it, on the registered version `base`:1, made with plain peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    base_dir = models / base / "1"
    overrides: dict[str, Any] = {}
    if labels is not None:
        overrides = {"id2label": {str(i): label for i, label in enumerate(labels)},
                     "label2id": {label: i for i, label in enumerate(labels)}}
    torch.manual_seed(seed)
    model = auto.from_pretrained(base_dir, **({"id2label": dict(enumerate(labels)), "ignore_mismatched_sizes": True}
                                              if labels else {}))
    peft_model = get_peft_model(model, LoraConfig(
        task_type=task_type, r=4, lora_alpha=8, target_modules=targets, modules_to_save=heads,
        fan_in_fan_out=task == "generation"))
    with torch.no_grad():
        for pname, param in peft_model.named_parameters():
            if "lora_B" in pname or "modules_to_save" in pname:
                param.normal_(0.0, 0.3)  # a trained adapter's weights are not zero: every adapter answers its own way
    out = models / name / "1"
    peft_model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    if (base_dir / "generation_config.json").is_file():
        shutil.copy(base_dir / "generation_config.json", out / "generation_config.json")
    (out / "training_params.json").write_text(json.dumps({
        "task": task, "method": "lora", "serving": serving or {},
        "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets,
                    "modules_to_save": heads or [], "model_config": overrides,
                    "base": {"resolved": f"model:{base}:1", "hub": None, "revision": None, "version": f"{base}:1"}}}))
    return out


def merged(auto: Any, models: Path, name: str) -> Any:
    """Plain peft and transformers: the adapter's base with its config values, the adapter merged in, fp32."""
    from peft import PeftModel

    params = json.loads((models / name / "1" / "training_params.json").read_text())["adapter"]
    base = params["base"]["version"].split(":")[0]
    overrides = dict(params["model_config"])
    if "id2label" in overrides:  # a head of its own: the base's may have another label count
        overrides = {**overrides, "id2label": {int(k): v for k, v in overrides["id2label"].items()},
                     "ignore_mismatched_sizes": True}
    model = auto.from_pretrained(models / base / "1", **overrides)
    return PeftModel.from_pretrained(model, models / name / "1").merge_and_unload().eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, hf_home: Path) -> Path:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForQuestionAnswering,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertForQuestionAnswering,
    )

    models = tmp_path_factory.mktemp("adapters") / "data" / "models"
    base = save_tiny_classifier(models / "cls" / "1")
    (base / "training_params.json").write_text(json.dumps({"task": "classification", "serving": {"max_length": 64}}))
    for name, seed, labels in (("cls-a", 1, ["no", "yes"]), ("cls-b", 2, ["bad", "good"]),
                               ("cls-c", 3, ["low", "mid", "high"]), ("cls-d", 4, ["x", "y"])):
        make_adapter(models=models, base="cls", name=name, task="classification",
                     auto=AutoModelForSequenceClassification, targets=["query", "value"], seed=seed,
                     heads=["classifier"], labels=labels, serving={"max_length": 64})
    qa_base = models / "qa" / "1"  # a span head on the tiny classifier's encoder and vocabulary
    torch.manual_seed(0)
    BertForQuestionAnswering(AutoConfig.from_pretrained(base)).save_pretrained(qa_base)
    AutoTokenizer.from_pretrained(base).save_pretrained(qa_base)
    (qa_base / "training_params.json").write_text(json.dumps({"task": "question-answering", "serving": {}}))
    for name, seed, longest in (("qa-a", 9, 2), ("qa-b", 10, 6)):
        make_adapter(models=models, base="qa", name=name, task="question-answering",
                     auto=AutoModelForQuestionAnswering, targets=["query", "value"], seed=seed, heads=["qa_outputs"],
                     serving={"max_length": 64, "doc_stride": 16, "max_answer_length": longest})
    for base_name, repo, task in (("gpt", TINY_GPT2, "generation"), ("t5", TINY_T5, "summarization")):
        (snapshot,) = list((cache_repo_dir(hf_home, repo) / "snapshots").iterdir())
        shutil.copytree(snapshot, models / base_name / "1")
        (models / base_name / "1" / "training_params.json").write_text(json.dumps({"task": task, "serving": {}}))
    for name, seed in (("gen-a", 5), ("gen-b", 6)):
        make_adapter(models=models, base="gpt", name=name, task="generation", auto=AutoModelForCausalLM,
                     targets=["c_attn"], seed=seed, task_type="CAUSAL_LM")
    for name, seed in (("sum-a", 7), ("sum-b", 8)):
        make_adapter(models=models, base="t5", name=name, task="summarization", auto=AutoModelForSeq2SeqLM,
                     targets=["q", "v"], seed=seed, task_type="SEQ_2_SEQ_LM", serving={"max_length": 64})
    return models


@pytest.fixture
def service(models: Path) -> Iterator[Callable[..., InferenceService]]:
    made: list[InferenceService] = []

    def make(**settings: Any) -> InferenceService:
        made.append(InferenceService(Settings(data_dir=models.parent, **settings)))
        return made[-1]

    yield make
    for s in made:
        for key in s.cache.loaded():  # no decode thread may outlive its test
            for cache in (s.cache.full, s.cache.adapters):
                entry = cache._items.get(key)
                loop = getattr(getattr(entry, "predictor", None), "decode_loop", None)
                if loop is not None:
                    loop.close()
        for executor in list(s._executors.values()):
            executor.shutdown(wait=True)
        for key in s.cache.loaded():
            s.cache.discard(key)


def resolved(models: Path, name: str, task: str) -> Resolved:
    return Resolved(name, 1, task, str(models / name / "1"))


def classify_merged(models: Path, name: str, text: str) -> tuple[str, float]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = merged(AutoModelForSequenceClassification, models, name)
    tok = AutoTokenizer.from_pretrained(models / name / "1")
    with torch.no_grad():
        probs = torch.softmax(model(**tok(text, return_tensors="pt")).logits[0], dim=-1)
    best = int(torch.argmax(probs))
    return model.config.id2label[best], float(probs[best])


class HeldBatches:
    """Wraps inference.service.predict_on_base: records each batch's adapter refs and holds the first one until
    `gate` is set, so that the requests sent meanwhile queue up behind it and share the next batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import inference.service

        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self._run = inference.service.predict_on_base
        monkeypatch.setattr(inference.service, "predict_on_base", self)

    def __call__(self, items: list[Any], params: dict[str, Any]) -> list[Any]:
        self.batches.append([item.source.model.adapter_name for item in items])
        if len(self.batches) == 1:
            assert self.gate.wait(60)
        return self._run(items, params)


async def until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


def behind_a_held_batch(svc: InferenceService, held: HeldBatches, runs: list[tuple[Resolved, list[Any]]],
                        **params: Any) -> list[list[Any]]:
    """Run runs[0] and hold its batch; the other runs queue up meanwhile (tokenized) and share the next batch once it
    is let go. Returns the results of runs[1:]."""

    async def main() -> list[list[Any]]:
        first = asyncio.ensure_future(svc.run(*runs[0], **params))
        await until("the first batch runs", lambda: len(held.batches) == 1)
        rest = [asyncio.ensure_future(svc.run(r, items, **params)) for r, items in runs[1:]]
        queued = sum(len(items) for _, items in runs[1:])
        await until("every request is queued", lambda: svc.queued(runs[0][0].ref) == queued)
        held.gate.set()
        await first
        return list(await asyncio.gather(*rest))

    return asyncio.run(main())


def test_adapters_of_one_base_load_it_once_share_a_batch_and_answer_as_their_merged_models(
        service: Callable[..., InferenceService], models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = service(max_batch_size=64)
    held = HeldBatches(monkeypatch)
    names = ["cls-a", "cls-b", "cls-c", "cls-d"]
    adapter_of = {}  # the adapter's name in the shared base → its version
    for name in names:  # loaded first, so that loading does not order the requests
        predictor = svc.cache.get(f"{name}:1", task="classification", path=str(models / name / "1"))
        adapter_of[predictor.model.adapter_name] = f"{name}:1"
    assert len(svc.cache.bases) == 1 and gauge(metrics.LOADED_BASES) == 1
    assert gauge(metrics.LOADED_ADAPTERS) == 4 and svc.cache.full.loaded() == []
    # Their tokenizers are copies of the base's, with the same serving settings: one object for the four.
    assert len(next(iter(svc.cache.bases.values())).tokenizers) == 1
    requests = [(name, [text]) for text in TEXTS for name in names]

    results = behind_a_held_batch(svc, held, [(resolved(models, "cls-a", "classification"), ["warm"]),
                                              *((resolved(models, name, "classification"), texts)
                                                for name, texts in requests)], top_k=None)
    # The queued requests of all four adapters (heads of 2 and 3 labels) ran as one batch.
    assert [sorted({adapter_of[a] for a in batch}) for batch in held.batches[1:]] == [[f"{n}:1" for n in names]]
    for (name, (text,)), (ranked,) in zip(requests, results, strict=True):
        label, score = classify_merged(models, name, text)
        assert ranked[0]["label"] == label and ranked[0]["score"] == pytest.approx(score, abs=1e-4), (name, text)
        assert len(ranked) == (3 if name == "cls-c" else 2)
    # A full version of the same weights is a model of its own, in the other cache, with batches of its own.
    full = asyncio.run(svc.run(resolved(models, "cls", "classification"), TEXTS[:2], top_k=1))
    assert [r[0]["label"] for r in full] and svc.cache.full.loaded() == ["cls:1"]
    assert len(svc.cache.bases) == 1


def test_the_adapter_cache_evicts_least_recently_used_adapters_and_the_base_goes_with_the_last(
        service: Callable[..., InferenceService], models: Path) -> None:
    svc = service(adapter_cache_size=2)

    async def classify(name: str, text: str = TEXTS[0]) -> dict[str, Any]:
        (ranked,) = await svc.run(resolved(models, name, "classification"), [text], top_k=1)
        return dict(ranked[0])

    def expected(name: str, text: str = TEXTS[0]) -> dict[str, Any]:
        label, score = classify_merged(models, name, text)
        return {"label": label, "score": pytest.approx(score, abs=1e-4)}

    async def main() -> None:  # one event loop for the service's batchers
        for name in ("cls-a", "cls-b"):
            await classify(name)
        base = next(iter(svc.cache.bases.values()))
        await classify("cls-c")  # over the count: cls-a (least recently used) leaves, the base stays
        assert sorted(svc.cache.adapters.loaded()) == ["cls-b:1", "cls-c:1"] and gauge(metrics.LOADED_ADAPTERS) == 2
        assert list(svc.cache.bases.values()) == [base] and len(base.adapters) == 2
        assert len(base.model.peft_config) == 2  # deleted from the base, not only forgotten
        assert await classify("cls-a") == expected("cls-a")  # loaded again
        for key in svc.cache.loaded():
            svc.cache.discard(key)
        assert svc.cache.bases == {} and gauge(metrics.LOADED_BASES) == 0 and gauge(metrics.LOADED_ADAPTERS) == 0
        # The base loaded again with a 3-label adapter first (a head of another width than the base version's),
        # then a 2-label adapter beside it: each answers with its own head.
        for name in ("cls-c", "cls-a"):
            assert await classify(name, TEXTS[1]) == expected(name, TEXTS[1]), name
        assert len(svc.cache.bases) == 1

    asyncio.run(main())


def test_the_adapter_byte_budget_evicts(service: Callable[..., InferenceService], models: Path) -> None:
    svc = service()
    svc.cache.adapters.max_bytes = (models / "cls-a" / "1" / "adapter_model.safetensors").stat().st_size * 2 + 1

    async def main() -> None:
        for name in ("cls-a", "cls-b", "cls-d"):
            await svc.run(resolved(models, name, "classification"), [TEXTS[0]], top_k=1)

    asyncio.run(main())
    assert sorted(svc.cache.adapters.loaded()) == ["cls-b:1", "cls-d:1"]


def test_question_answering_adapters_share_a_forward_pass_and_keep_their_own_answer_length(
        service: Callable[..., InferenceService], models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    svc = service(max_batch_size=64)
    held = HeldBatches(monkeypatch)
    pairs = [("what was the film", "the film was good and the movie is bad"),
             ("was it dull", "a dull movie of the great film"), ("what is it", "it is a good film to the end")]
    requests = [(name, pair) for pair in pairs for name in ("qa-a", "qa-b")]

    results = behind_a_held_batch(svc, held, [(resolved(models, "qa-a", "question-answering"), [pairs[0]]),
                                              *((resolved(models, name, "question-answering"), [pair])
                                                for name, pair in requests)])
    assert len(held.batches) == 2 and len(set(held.batches[1])) == 2  # both adapters, one batch
    for (name, (question, context)), (answer,) in zip(requests, results, strict=True):
        folder = models / name / "1"
        longest = json.loads((folder / "training_params.json").read_text())["serving"]["max_answer_length"]
        tok = AutoTokenizer.from_pretrained(folder)
        enc = tok(question, context, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0]
        with torch.no_grad():
            out = merged(AutoModelForQuestionAnswering, models, name)(**enc)
        ps, pe = torch.softmax(out.start_logits[0].double(), -1), torch.softmax(out.end_logits[0].double(), -1)
        ctx = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]
        score, s, e = max((float(ps[s] * pe[e]), s, e) for s in ctx for e in ctx if s <= e < s + longest)
        assert (answer["start"], answer["end"]) == (int(offsets[s][0]), int(offsets[e][1])), name
        assert answer["score"] == pytest.approx(score, abs=1e-4) and answer["end"] - answer["start"] > 0


def greedy_merged(models: Path, name: str, prompt: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models / name / "1")
    model = merged(AutoModelForCausalLM, models, name)
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    return str(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


@pytest.mark.parametrize("continuous", [True, False])
def test_generation_adapters_give_their_merged_models_greedy_text(
        service: Callable[..., InferenceService], models: Path, continuous: bool) -> None:
    svc = service(continuous_batching=continuous, max_batch_wait_ms=50)
    requests = [(name, prompt, 6 + 2 * i) for i, prompt in enumerate(PROMPTS) for name in ("gen-a", "gen-b")]

    async def main() -> list[list[Any]]:
        return list(await asyncio.gather(*(
            svc.run(resolved(models, name, "generation"), [prompt], max_new_tokens=n, min_new_tokens=n)
            for name, prompt, n in requests)))

    results = asyncio.run(main())
    assert len(svc.cache.bases) == 1 and sorted(svc.cache.adapters.loaded()) == ["gen-a:1", "gen-b:1"]
    texts = {}
    for (name, prompt, n), (result,) in zip(requests, results, strict=True):
        assert result["text"] == greedy_merged(models, name, prompt, n), (name, prompt)
        texts.setdefault(prompt, set()).add(result["text"])
    assert any(len(t) == 2 for t in texts.values())  # the adapters do answer differently


def test_summarization_adapters_share_a_generate_and_give_their_merged_models_text(
        service: Callable[..., InferenceService], models: Path) -> None:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    svc = service(max_batch_wait_ms=200)
    requests = [(name, doc) for doc in DOCUMENTS for name in ("sum-a", "sum-b")]
    for beams in (1, 2):
        async def main(beams: int = beams) -> list[list[Any]]:
            return list(await asyncio.gather(*(
                svc.run(resolved(models, name, "summarization"), [doc], max_new_tokens=8, num_beams=beams)
                for name, doc in requests)))

        results = asyncio.run(main())
        for (name, doc), (summary,) in zip(requests, results, strict=True):
            tok = AutoTokenizer.from_pretrained(models / name / "1")
            model = merged(AutoModelForSeq2SeqLM, models, name)
            with torch.no_grad():
                out = model.generate(**tok([doc], return_tensors="pt", truncation=True, max_length=64),
                                     max_new_tokens=8, num_beams=beams, do_sample=False)
            assert summary == tok.decode(out[0], skip_special_tokens=True).strip(), (name, beams)
    assert len(svc.cache.bases) == 1


def test_a_refused_request_does_not_keep_its_adapter_loaded(service: Callable[..., InferenceService],
                                                            models: Path) -> None:
    from core.errors import ValidationFailed

    svc = service(continuous_batching=False, adapter_cache_size=1, request_timeout_seconds=10)

    async def main() -> list[Any]:
        with pytest.raises(ValidationFailed, match="context"):  # refused while it is encoded
            await svc.run(resolved(models, "gen-a", "generation"), ["the king " * 200], max_new_tokens=4)
        assert ("encode", "gen-a:1") not in svc._executors  # no batcher will ever end that thread
        # gen-a is not pinned: it makes room for gen-b (a leaked pin would keep it, and this would time out).
        return await svc.run(resolved(models, "gen-b", "generation"), ["the king"], max_new_tokens=4)

    (result,) = asyncio.run(main())
    assert result["tokens"] == 4 and svc.cache.adapters.loaded() == ["gen-b:1"]


def test_a_request_cancelled_while_encoded_does_not_keep_its_adapter_loaded(
        service: Callable[..., InferenceService], models: Path) -> None:
    svc = service(adapter_cache_size=1, request_timeout_seconds=10)
    encoding, gate = threading.Event(), threading.Event()
    encode = svc._encode

    def held(*args: Any) -> Any:  # the encoding has pinned cls-a and is still running when its request goes
        done = encode(*args)
        encoding.set()
        assert gate.wait(30)
        return done

    async def main() -> list[Any]:
        svc._encode = held  # type: ignore[method-assign]
        request = asyncio.ensure_future(svc.run(resolved(models, "cls-a", "classification"), ["fine"], top_k=None))
        await until("cls-a encoded", encoding.is_set)
        request.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await request
        svc._encode = encode  # type: ignore[method-assign]
        # cls-a is not pinned: it makes room for cls-b (a leaked pin would keep it, and this would time out).
        return await svc.run(resolved(models, "cls-b", "classification"), ["fine"], top_k=None)

    (ranked,) = asyncio.run(main())
    assert {p["label"] for p in ranked} == {"bad", "good"} and svc.cache.adapters.loaded() == ["cls-b:1"]
