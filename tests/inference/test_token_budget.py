"""/classify and /answer through InferenceService with real (tiny) models: a request's inputs are tokenized once,
in the request path, and the batch budget (FTSERVE_MAX_BATCH_TOKENS) counts the real padded tokens of those
encodings — QA windows included — where characters would guess wrong (CJK, code); predictions equal a plain
transformers reference."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from inference.predictors.base import Encoded
from inference.predictors.classification import ClassificationPredictor
from inference.predictors.question_answering import QuestionAnsweringPredictor
from inference.service import InferenceService, Resolved
from tests.reference import classify_reference
from tests.tinymodels import save_tiny_classifier

# 20 characters, 20 tokens each (+ [CLS] and [SEP]): BERT splits CJK characters and punctuation one per token, so
# the old estimate of ~4 characters per token (20 // 4 + 2 = 7) is off by 3x.
CJK = ["你好世界再见朋友早安晚安" + "谢谢" * 4, "天气很好我们去公园散步吧今天" + "真的" * 3]
CODE = ["x=1;y=2;z=3;a=b;c=d;", "f(a,b);g(c);h[0]=1;;"]
SENTENCE = "the film was good and the movie is bad of a great dull film to it"


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = save_tiny_classifier(tmp_path_factory.mktemp("budget") / "classifier")
    (out / "training_params.json").write_text(json.dumps(
        {"task": "classification", "serving": {"labels": ["negative", "positive"], "max_length": 64}}))
    return out


@pytest.fixture(scope="module")
def qa_dir(classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A span head on the tiny classifier's encoder and vocabulary; windows of 32 tokens overlapping by 8."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForQuestionAnswering

    out = tmp_path_factory.mktemp("budget") / "qa"
    torch.manual_seed(1)
    BertForQuestionAnswering(AutoConfig.from_pretrained(classifier_dir)).save_pretrained(out)
    AutoTokenizer.from_pretrained(classifier_dir).save_pretrained(out)
    (out / "training_params.json").write_text(json.dumps(
        {"task": "question-answering", "serving": {"max_length": 32, "doc_stride": 8, "max_answer_length": 10}}))
    return out


class Recorder:
    """Wraps a loaded predictor's `predict`: records each batch's encoded inputs and holds the first batch until
    `gate` is set, so that the requests sent meanwhile queue up behind it."""

    def __init__(self, predictor: Any) -> None:
        self.batches: list[list[Encoded]] = []
        self.gate = threading.Event()
        self._predict = predictor.predict
        predictor.predict = self

    def __call__(self, encoded: list[Encoded], **params: Any) -> list[Any]:
        self.batches.append(list(encoded))
        if len(self.batches) == 1:
            assert self.gate.wait(60)
        result: list[Any] = self._predict(encoded, **params)
        return result


class CountingTokenizer:
    """A tokenizer that records the thread of every call (tokenizing), and delegates everything else."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.calls: list[tuple[str, int]] = []  # (thread name, number of inputs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else kwargs.get("text")
        self.calls.append((threading.current_thread().name, len(first) if isinstance(first, list) else 1))
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Callable[..., InferenceService]]:
    made: list[InferenceService] = []

    def make(**settings: Any) -> InferenceService:
        made.append(InferenceService(Settings(data_dir=tmp_path / "data", **settings)))
        return made[-1]

    yield make
    for s in made:
        for executor in list(s._executors.values()):  # the per-model forward threads
            executor.shutdown(wait=True)


async def until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


def run_behind_a_held_batch(service: InferenceService, resolved: Resolved, recorder: Recorder,
                            requests: list[list[Any]], **params: Any) -> list[list[Any]]:
    """Send one request and hold its batch; send `requests` (all queue up, tokenized), then let the model go on.
    Returns each request's results; `recorder.batches[1:]` are the batches the queued requests ran in."""

    async def main() -> list[list[Any]]:
        first = asyncio.ensure_future(service.run(resolved, requests[0], **params))
        await until("the first batch runs", lambda: len(recorder.batches) == 1)
        rest = [asyncio.ensure_future(service.run(resolved, items, **params)) for items in requests]
        await until("every request is queued", lambda: service.queued(resolved.ref) == sum(map(len, requests)))
        recorder.gate.set()
        await first
        return list(await asyncio.gather(*rest))

    return asyncio.run(main())


def test_classify_batches_are_cut_by_real_tokens_and_predictions_equal_the_reference(
        service: Callable[..., InferenceService], classifier_dir: Path) -> None:
    svc = service(max_batch_tokens=100, max_batch_size=64)
    resolved = Resolved("tiny", 1, "classification", str(classifier_dir))
    predictor = svc.cache.get(resolved.ref, task=resolved.task, path=resolved.path)
    texts = (CJK + CODE) * 3
    lengths = [e.lengths[0] for e in predictor.encode(texts)]
    assert lengths == [22] * 12  # 1 token per character here, not 1 per 4
    recorder = Recorder(predictor)

    results = run_behind_a_held_batch(svc, resolved, recorder, [[t] for t in texts], top_k=1)

    # 4 × 22 = 88 padded tokens fit the budget of 100 and a 5th input (110) does not. Counted at ~4 characters per
    # token (7 each), all 12 would have shared one batch.
    assert [len(batch) for batch in recorder.batches[1:]] == [4, 4, 4]
    assert all(ClassificationPredictor.padded_tokens(batch) <= 100 for batch in recorder.batches[1:])
    for text, (best,) in zip(texts, (r[0] for r in results), strict=True):
        label, score = classify_reference(classifier_dir, text)
        assert best["label"] == label and best["score"] == pytest.approx(score, abs=1e-4), text


def test_a_request_is_tokenized_once_off_the_event_loop_and_not_in_the_forward(
        service: Callable[..., InferenceService], classifier_dir: Path) -> None:
    svc = service()
    resolved = Resolved("tiny", 1, "classification", str(classifier_dir))
    predictor = svc.cache.get(resolved.ref, task=resolved.task, path=resolved.path)
    counting = predictor.tokenizer = CountingTokenizer(predictor.tokenizer)
    requests = [["great film", "dull movie"], ["a bad film"], CJK]

    async def main() -> list[list[Any]]:
        return list(await asyncio.gather(*(svc.run(resolved, texts, top_k=1) for texts in requests)))

    results = asyncio.run(main())
    assert sorted(n for _, n in counting.calls) == sorted(len(r) for r in requests)  # one call per request
    threads = {name for name, _ in counting.calls}
    assert threading.main_thread().name not in threads  # the event loop's thread
    assert not any(name.startswith("forward-") for name in threads)  # the model's forward thread
    assert [len(r) for r in results] == [2, 1, 2]


def test_qa_windows_count_as_real_rows_in_the_budget(service: Callable[..., InferenceService], qa_dir: Path
                                                     ) -> None:
    long_pair = ("what was the film", " ".join([SENTENCE] * 6))
    short_pairs = [("was it good", "the film was good"), ("was it bad", "the movie is bad")]
    (long_encoded,) = QuestionAnsweringPredictor(qa_dir).encode([long_pair])
    assert len(long_encoded.rows) >= 4  # a context of ~100 tokens in windows of 32
    # The budget fits one long context's windows and not one input more.
    svc = service(max_batch_size=64, max_batch_tokens=QuestionAnsweringPredictor.padded_tokens([long_encoded]))
    resolved = Resolved("squad", 1, "question-answering", str(qa_dir))
    predictor = svc.cache.get(resolved.ref, task=resolved.task, path=resolved.path)
    recorder = Recorder(predictor)

    requests = [[long_pair], [long_pair], short_pairs]
    results = run_behind_a_held_batch(svc, resolved, recorder, requests)

    # Requests queue in the order their tokenization ends: compare the batches, not their order.
    assert sorted([len(e.rows) for e in batch] for batch in recorder.batches[1:]) == sorted([
        [len(long_encoded.rows)], [len(long_encoded.rows)], [1, 1]])
    recorder.gate.set()
    for pairs, answers in zip(requests, results, strict=True):
        assert answers == predictor(pairs)  # batched as above or alone: the same spans
        for (_, context), answer in zip(pairs, answers, strict=True):
            assert context[answer["start"]:answer["end"]] == answer["answer"]
