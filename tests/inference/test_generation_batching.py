"""Generation batches prompts of different lengths in one left-padded `generate` call, and each text is the one
an unbatched call gives; seeded sampling does not depend on its batch-mates."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.hfcache import cache_repo_dir
from inference.predictors.generation import GenerationPredictor
from tests.tiny_gpt2 import TINY_GPT2

SENTENCE = ("the king spoke to the queen of the north and then walked slowly along the old stone road toward "
            "the river where the boats were waiting in the morning light")
WORDS = SENTENCE.split()


@pytest.fixture(scope="module")
def predictor(hf_home: Path) -> GenerationPredictor:
    (snapshot,) = list((cache_repo_dir(hf_home, TINY_GPT2) / "snapshots").iterdir())
    return GenerationPredictor(snapshot)


def prompts(predictor: GenerationPredictor, count: int = 16) -> list[str]:
    out = [" ".join(WORDS[: 2 + 2 * i]) for i in range(count)]
    lengths = {len(predictor.tokenizer(p)["input_ids"]) for p in out}
    assert len(lengths) >= count // 2, lengths  # lengths differ: one padded call, not groups of equal length
    return out


def test_prompts_of_different_lengths_batched_equal_one_at_a_time(predictor: GenerationPredictor) -> None:
    texts = prompts(predictor)
    params = {"max_new_tokens": 12, "min_new_tokens": 12}
    batched = predictor(texts, **params)
    alone = [predictor([t], **params)[0] for t in texts]
    assert batched == alone
    assert all(r["tokens"] == 12 and r["finish_reason"] == "length" for r in batched)


def test_stop_strings_and_eos_end_each_row_as_alone(predictor: GenerationPredictor) -> None:
    texts = prompts(predictor, 6)
    params = {"max_new_tokens": 20, "stop": ["e"]}
    assert predictor(texts, **params) == [predictor([t], **params)[0] for t in texts]


def test_seeded_sampling_does_not_depend_on_batch_mates(predictor: GenerationPredictor) -> None:
    texts = prompts(predictor, 4)
    params = {"max_new_tokens": 10, "do_sample": True, "seed": 7, "temperature": 1.5}
    alone = predictor([texts[2]], **params)[0]
    assert predictor(texts, **params)[2] == alone
    assert predictor(texts[::-1], **params)[1] == alone


def test_rows_with_their_own_max_new_tokens_share_a_call_and_each_stops_at_its_own(
        predictor: GenerationPredictor) -> None:
    texts = prompts(predictor, 8)
    budgets = [4, 16, 9, 30, 1, 12, 16, 5]
    encoded = [e for t, n in zip(texts, budgets, strict=True) for e in predictor.encode([t], max_new_tokens=n)]
    batched = predictor.predict(encoded, min_new_tokens=1)
    alone = [predictor([t], max_new_tokens=n, min_new_tokens=1)[0] for t, n in zip(texts, budgets,
                                                                                          strict=True)]
    assert batched == alone
    assert [r["tokens"] for r in batched if r["finish_reason"] == "length"] == [
        n for r, n in zip(batched, budgets, strict=True) if r["finish_reason"] == "length"]
