"""Extractive-QA post-processing: turn per-token start/end logits into character spans of the context.

Numpy only (no torch, no transformers: `encode_windows` calls the tokenizer it is given), so evaluation and
serving share the same code. Mirrors the idea of
transformers' ``examples/pytorch/question-answering/utils_qa.py::postprocess_qa_predictions`` with a
well-defined score:

* A long context is tokenized into several overlapping *windows* (``stride``/``return_overflowing_tokens``).
  Each window is described by a :class:`Window`: the index of its example and, per token, the
  ``(char_start, char_end)`` offsets into that example's context, or ``None`` for tokens outside the
  context (question, special tokens, padding). Build it from a fast tokenizer's ``offset_mapping`` and
  ``sequence_ids``, keeping the offset only where ``sequence_id == 1`` (the context side).
* Per window, ``p_start`` / ``p_end`` are the softmax of that window's logits over its ``len(offsets)``
  positions. A span ``(s, e)`` scores ``p_start[s] * p_end[e]``.
* Candidates are the top-``n_best`` start and top-``n_best`` end positions *among context tokens* of each
  window; pairs with ``e < s``, more than ``max_answer_length`` tokens, or an offset of ``None`` are never
  returned. The best span over all windows of an example wins.

Logits are accepted either as a sequence of 1-D arrays (one per window) or as a 2-D ``(num_windows, seq_len)``
array, e.g. straight from a padded batch. In both cases only the first ``len(window.offsets)`` positions of a
row are used; positions beyond that (padding) are excluded from the softmax. A row shorter than
``len(window.offsets)`` is an error.

Ties are broken deterministically: the earliest window wins, then the smallest start token, then the
smallest end token; equal logits at the top-``n_best`` boundary keep the lower token index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Offsets = list[tuple[int, int] | None]
LogitsInput = np.ndarray | Sequence[np.ndarray] | Sequence[Sequence[float]]


@dataclass(frozen=True)
class Window:
    """One tokenized window of an example: ``offsets[i]`` is token i's (char_start, char_end) or None."""

    example_index: int
    offsets: Offsets


@dataclass(frozen=True)
class Span:
    """An answer with character offsets into its context: ``context[start:end] == answer``."""

    answer: str
    score: float
    start: int
    end: int


EMPTY_SPAN = Span("", 0.0, 0, 0)


def window_from_encoding(
    example_index: int, offset_mapping: Sequence[Sequence[int]], sequence_ids: Sequence[int | None]
) -> Window:
    """Build a :class:`Window` from one row of a fast tokenizer's ``offset_mapping`` and ``sequence_ids``."""
    if len(offset_mapping) != len(sequence_ids):
        raise ValueError(f"offset_mapping has {len(offset_mapping)} tokens but sequence_ids {len(sequence_ids)}")
    offsets: Offsets = [
        (int(o[0]), int(o[1])) if sid == 1 else None for o, sid in zip(offset_mapping, sequence_ids, strict=True)
    ]
    return Window(example_index=example_index, offsets=offsets)


def encode_windows(tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], *, max_length: int,
                   stride: int) -> Any:
    """(question, context) pairs tokenized into windows of `max_length` tokens overlapping by `stride` (only the
    context is cut), with the offsets and `overflow_to_sample_mapping` that :func:`window_from_encoding` reads:
    training and serving read a context the same way."""
    return tokenizer(
        [q.lstrip() for q in questions], list(contexts), truncation="only_second", max_length=max_length,
        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x)
    e = np.exp(z)
    return e / e.sum()


def _row(logits: LogitsInput, i: int, length: int, name: str) -> np.ndarray:
    row = np.asarray(logits[i], dtype=np.float64)
    if row.ndim != 1:
        raise ValueError(f"{name}[{i}] must be 1-D, got shape {row.shape}")
    if row.shape[0] < length:
        raise ValueError(f"{name}[{i}] has {row.shape[0]} positions but the window has {length} tokens")
    return row[:length]


def _top_valid(logits: np.ndarray, valid: np.ndarray, n_best: int) -> np.ndarray:
    """Indices of the n_best largest logits among valid positions, returned in ascending index order."""
    idx = np.flatnonzero(valid)
    order = np.argsort(-logits[idx], kind="stable")[:n_best]
    return np.sort(idx[order])


def _best_in_window(
    window: Window, start: np.ndarray, end: np.ndarray, *, max_answer_length: int, n_best: int
) -> tuple[float, int, int] | None:
    """(score, start_char, end_char) of the best valid span of one window, or None if it has none."""
    n = len(window.offsets)
    if n == 0:
        return None
    valid = np.array([o is not None for o in window.offsets], dtype=bool)
    if not valid.any():
        return None
    p_start, p_end = _softmax(start), _softmax(end)
    s_idx = _top_valid(start, valid, n_best)
    e_idx = _top_valid(end, valid, n_best)
    char_start = np.array([window.offsets[i][0] for i in s_idx])  # type: ignore[index]
    char_end = np.array([window.offsets[i][1] for i in e_idx])  # type: ignore[index]
    length = e_idx[None, :] - s_idx[:, None] + 1
    ok = (length >= 1) & (length <= max_answer_length) & (char_end[None, :] >= char_start[:, None])
    if not ok.any():
        return None
    scores = np.where(ok, p_start[s_idx][:, None] * p_end[e_idx][None, :], -np.inf)
    # Candidates are in ascending token order, so argmax (first maximum) picks the smallest start, then end.
    flat = int(np.argmax(scores))
    si, ei = divmod(flat, len(e_idx))
    return float(scores[si, ei]), int(char_start[si]), int(char_end[ei])


def best_spans(
    *,
    contexts: Sequence[str],
    windows: Sequence[Window],
    start_logits: LogitsInput,
    end_logits: LogitsInput,
    max_answer_length: int,
    n_best: int = 20,
) -> list[Span]:
    """Best answer span per context (``len(result) == len(contexts)``); see the module docstring for the rules.

    ``start_logits[i]`` / ``end_logits[i]`` belong to ``windows[i]``; only their first ``len(windows[i].offsets)``
    positions are used. An example without any valid span (or without windows) gets ``Span("", 0.0, 0, 0)``.
    """
    if max_answer_length < 1:
        raise ValueError(f"max_answer_length must be >= 1, got {max_answer_length}")
    if n_best < 1:
        raise ValueError(f"n_best must be >= 1, got {n_best}")
    if len(start_logits) != len(windows) or len(end_logits) != len(windows):
        raise ValueError(
            f"got {len(windows)} windows but {len(start_logits)} start_logits and {len(end_logits)} end_logits rows"
        )
    best: list[tuple[float, int, int] | None] = [None] * len(contexts)
    for i, window in enumerate(windows):
        ex = window.example_index
        if not 0 <= ex < len(contexts):
            raise ValueError(f"windows[{i}].example_index={ex} out of range for {len(contexts)} contexts")
        n = len(window.offsets)
        for off in window.offsets:
            if off is not None and not (0 <= off[0] <= len(contexts[ex]) and 0 <= off[1] <= len(contexts[ex])):
                raise ValueError(f"windows[{i}] has offset {off} outside its context of length {len(contexts[ex])}")
        found = _best_in_window(
            window,
            _row(start_logits, i, n, "start_logits"),
            _row(end_logits, i, n, "end_logits"),
            max_answer_length=max_answer_length,
            n_best=n_best,
        )
        # Strictly greater: on a tie the earlier window keeps the answer.
        if found is not None and (best[ex] is None or found[0] > best[ex][0]):  # type: ignore[index]
            best[ex] = found
    out: list[Span] = []
    for ex, found in enumerate(best):
        if found is None:
            out.append(EMPTY_SPAN)
        else:
            score, start, end = found
            out.append(Span(answer=contexts[ex][start:end], score=score, start=start, end=end))
    return out
