"""Text-generation and QA metrics computed locally: no ``evaluate.load``, no network.

* SQuAD v1.1 exact match / token F1 (same normalization as the official ``evaluate-v1.1.py`` script).
* ROUGE-1/2/L/Lsum F-measures via the ``rouge_score`` package (Porter stemming), averaged over examples.

All results are fractions in [0, 1], not percentages.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1: lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _check_golds(golds: Sequence[str]) -> None:
    if isinstance(golds, str):
        raise TypeError("golds must be a list of answers, not a single string")
    if len(golds) == 0:
        raise ValueError("at least one gold answer is required")


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:  # as in v1.1, this includes two empty answers
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized gold answer, else 0.0."""
    _check_golds(golds)
    return max(_exact(prediction, g) for g in golds)


def f1(prediction: str, golds: Sequence[str]) -> float:
    """Token-level F1 between normalized bags of words, maximised over the gold answers."""
    _check_golds(golds)
    return max(_token_f1(prediction, g) for g in golds)


def squad_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 over examples, as fractions: ``{"exact_match": ..., "f1": ...}``."""
    if len(predictions) != len(golds):
        raise ValueError(f"got {len(predictions)} predictions but {len(golds)} gold lists")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = sum(exact_match(p, g) for p, g in zip(predictions, golds, strict=True))
    f = sum(f1(p, g) for p, g in zip(predictions, golds, strict=True))
    n = len(predictions)
    return {"exact_match": em / n, "f1": f / n}


def _regex_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s]


@lru_cache(maxsize=1)
def _sentence_splitter() -> Callable[[str], list[str]]:
    """nltk's punkt sentence tokenizer when its data is installed locally, else a regex split on .!? + space."""
    try:
        import nltk

        nltk.sent_tokenize("Probe sentence. Another one.")
    except (ImportError, LookupError, OSError):
        return _regex_sentences
    return nltk.sent_tokenize


def split_sentences_for_rougelsum(text: str) -> str:
    """One sentence per line, as HF's summarization example does before computing rougeLsum."""
    return "\n".join(_sentence_splitter()(text.strip()))


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measures (``rouge_score`` with Porter stemming), in [0, 1].

    Texts are split into sentences, one per line, so that rougeLsum is the summary-level LCS over sentences;
    the other scores ignore line breaks. The mean is a plain average over examples (``evaluate``'s default
    bootstrap aggregator reports a resampled estimate of the same mean).
    """
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return dict.fromkeys(ROUGE_TYPES, 0.0)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(split_sentences_for_rougelsum(ref), split_sentences_for_rougelsum(pred))
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: totals[key] / len(predictions) for key in ROUGE_TYPES}
