"""/summarize batching on a tiny T5: documents of different lengths share a `generate` call (right-padded, with an
attention mask) and get the summaries they get alone; documents whose lengths differ widely run in separate calls,
shortest first, and a short request batched with a long one is answered while the long one's call still runs."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.hfcache import cache_repo_dir
from inference.predictors.summarization import SummarizationPredictor
from inference.service import InferenceService, Resolved
from tests.inference.helpers import until
from tests.tinymodels import TINY_T5

SHORT = ["a short note on the weather", "the vote is on monday", "rain in the north", "the team won again"]
GREEDY = {"max_new_tokens": 10, "min_new_tokens": 6, "num_beams": 1, "length_penalty": 1.0,
          "no_repeat_ngram_size": 0}


@pytest.fixture(scope="module")
def t5_dir(hf_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    (snapshot,) = list((cache_repo_dir(hf_home, TINY_T5) / "snapshots").iterdir())
    out = tmp_path_factory.mktemp("summarize") / "model"
    shutil.copytree(snapshot, out)
    (out / "training_params.json").write_text(json.dumps(
        {"task": "summarization", "serving": {"prefix": "summarize: ", "max_length": 256}}))
    return out


@pytest.fixture(scope="module")
def documents(shared_data: Path) -> list[str]:
    with (shared_data / "summarization" / "validation.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["document"] for _, line in zip(range(12), f, strict=False)]


class HeldGenerate:
    """Wraps a loaded model: records the real input lengths of every `generate` call, holds the first call until
    `first` is set and every call with an input of `long_from` tokens or more until `long` is set."""

    def __init__(self, model: Any, *, long_from: int) -> None:
        self._model, self.long_from = model, long_from
        self.calls: list[list[int]] = []
        self.first, self.long = threading.Event(), threading.Event()

    def generate(self, **kwargs: Any) -> Any:
        lengths = [int(n) for n in kwargs["attention_mask"].sum(dim=1)]
        self.calls.append(lengths)
        if len(self.calls) == 1:
            assert self.first.wait(60)
        if max(lengths) >= self.long_from:
            assert self.long.wait(60)
        return self._model.generate(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def test_documents_of_different_lengths_share_a_call_and_equal_their_summaries_alone(t5_dir: Path,
                                                                                       documents: list[str]) -> None:
    predictor = SummarizationPredictor(t5_dir)
    words = documents[0].split()
    docs = [" ".join(words[: 4 + 3 * i]) for i in range(6)]
    lengths = [e.lengths[0] for e in predictor.encode(docs)]
    assert len(set(lengths)) == 6, lengths
    held = predictor.model = HeldGenerate(predictor.model, long_from=10**6)
    held.first.set()

    batched = predictor(docs, **GREEDY)

    assert held.calls == [sorted(lengths)]  # one call, shortest first
    assert batched == [predictor([d], **GREEDY)[0] for d in docs]
    assert len(set(batched)) > 1 and all(batched)  # real, different summaries: not a trivially equal output


def test_documents_whose_lengths_differ_widely_run_in_separate_calls_shortest_first(
        t5_dir: Path, documents: list[str]) -> None:
    predictor = SummarizationPredictor(t5_dir)
    docs = [d for pair in zip(documents[1:5], SHORT, strict=True) for d in pair]  # long, short, long, short, …
    lengths = [e.lengths[0] for e in predictor.encode(docs)]
    assert lengths[::2] == [256] * 4 and max(lengths[1::2]) < 16, lengths  # long ones cut at max_length
    held = predictor.model = HeldGenerate(predictor.model, long_from=10**6)
    held.first.set()

    batched = predictor(docs, **GREEDY)

    # 8 rows padded to 256 would be ~4x their real tokens: two calls, the short documents' first.
    assert held.calls == [sorted(lengths[1::2]), lengths[::2]]
    assert batched == [predictor([d], **GREEDY)[0] for d in docs]


def test_a_short_request_batched_with_a_long_one_is_answered_while_the_long_call_runs(
        make_service: Callable[..., InferenceService], t5_dir: Path, documents: list[str]) -> None:
    service = make_service()
    resolved = Resolved("digest", 1, "summarization", str(t5_dir))
    predictor = service.cache.get(resolved.ref, task=resolved.task, path=resolved.path)
    long_docs = documents[1:5]
    long_lens = [e.lengths[0] for e in predictor.encode(long_docs)]
    short_lens = [e.lengths[0] for e in predictor.encode(SHORT)]
    assert long_lens == [256] * 4 and max(short_lens) < 16
    held = predictor.model = HeldGenerate(predictor.model, long_from=256)

    async def main() -> tuple[list[str], list[str]]:
        first = asyncio.ensure_future(service.run(resolved, ["a first request"], **GREEDY))
        await until("the first call runs", lambda: len(held.calls) == 1)
        long = asyncio.ensure_future(service.run(resolved, long_docs, **GREEDY))  # arrives first
        await until("the long request is queued", lambda: service.queued(resolved.ref) == 4)
        short = asyncio.ensure_future(service.run(resolved, SHORT, **GREEDY))
        await until("both are queued", lambda: service.queued(resolved.ref) == 8)
        held.first.set()
        await first
        short_summary = await asyncio.wait_for(short, 60)  # while the long document's call is held
        assert not long.done()
        held.long.set()
        return short_summary, await long

    short_summaries, long_summaries = asyncio.run(main())
    # Both were taken in one batch (queued together; taken one at a time, the long one, first to arrive, would have
    # run first) and ran as two calls, the short documents' first.
    assert held.calls[1:] == [sorted(short_lens), long_lens]
    assert short_summaries == [predictor([d], **GREEDY)[0] for d in SHORT]
    assert long_summaries == [predictor([d], **GREEDY)[0] for d in long_docs]
