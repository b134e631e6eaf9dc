from __future__ import annotations

import re

import numpy as np
import pytest

from training.qa_postprocess import EMPTY_SPAN, Span, Window, best_spans, window_from_encoding

QUESTION_TOKENS = 4  # [CLS] q q [SEP] before the context in every window


def word_offsets(context: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", context)]


def make_windows(example_index: int, offsets: list[tuple[int, int]], *, size: int, stride: int) -> list[Window]:
    """Overlapping windows of `size` context tokens advancing by `stride`, each with a question prefix."""
    windows = []
    start = 0
    while True:
        chunk = offsets[start : start + size]
        windows.append(Window(example_index, [None] * QUESTION_TOKENS + list(chunk) + [None]))
        if start + size >= len(offsets):
            return windows
        start += stride


def peaked(n: int, peaks: dict[int, float], base: float = 0.0) -> np.ndarray:
    x = np.full(n, base)
    for i, v in peaks.items():
        x[i] = v
    return x


def test_best_span_is_found_in_the_second_stride_window() -> None:
    context = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    offs = word_offsets(context)
    windows = make_windows(0, offs, size=6, stride=4)  # words 0-5 and 4-9
    assert len(windows) == 2
    n = len(windows[0].offsets)
    q = QUESTION_TOKENS
    # Window 0 mildly likes word 1; window 1 strongly likes words 7..8 (local tokens 3..4).
    starts = [peaked(n, {q + 1: 2.0}), peaked(n, {q + 3: 8.0})]
    ends = [peaked(n, {q + 1: 2.0}), peaked(n, {q + 4: 8.0})]
    (span,) = best_spans(contexts=[context], windows=windows, start_logits=starts, end_logits=ends, max_answer_length=5)
    assert span.answer == "w7 w8"
    assert context[span.start : span.end] == span.answer

    # Same windows, the first one wins when its span is better: the answer is not just "the last window".
    starts = [peaked(n, {q + 1: 9.0}), peaked(n, {q + 3: 3.0})]
    ends = [peaked(n, {q + 2: 9.0}), peaked(n, {q + 4: 3.0})]
    (span,) = best_spans(contexts=[context], windows=windows, start_logits=starts, end_logits=ends, max_answer_length=5)
    assert span.answer == "w1 w2"


def test_answer_at_the_very_end_of_a_long_context() -> None:
    context = " ".join(f"word{i}" for i in range(300)) + " the final answer."
    offs = word_offsets(context)
    windows = make_windows(0, offs, size=64, stride=48)
    assert len(windows) > 3
    n = max(len(w.offsets) for w in windows)
    starts = np.zeros((len(windows), n))
    ends = np.zeros((len(windows), n))
    last = windows[-1]
    k = len(last.offsets) - 2  # last context token, before the trailing [SEP]
    assert last.offsets[k] == offs[-1]
    starts[-1, k - 1] = 10.0
    ends[-1, k] = 10.0
    (span,) = best_spans(
        contexts=[context], windows=windows, start_logits=starts, end_logits=ends, max_answer_length=30
    )
    assert span.answer == "final answer."
    assert span.end == len(context)
    assert context[span.start : span.end] == span.answer


def _single(context: str, starts: np.ndarray, ends: np.ndarray, *, max_answer_length: int, n_best: int = 20) -> Span:
    window = Window(0, [None] * QUESTION_TOKENS + word_offsets(context) + [None])
    (span,) = best_spans(
        contexts=[context],
        windows=[window],
        start_logits=[starts],
        end_logits=[ends],
        max_answer_length=max_answer_length,
        n_best=n_best,
    )
    assert context[span.start : span.end] == span.answer
    return span


def test_spans_in_the_question_are_never_returned() -> None:
    context = "alpha beta gamma delta"
    n = QUESTION_TOKENS + 4 + 1
    q = QUESTION_TOKENS
    starts = peaked(n, {0: 50.0, 1: 40.0, q + 2: 1.0})  # [CLS] and a question token dominate
    ends = peaked(n, {2: 50.0, n - 1: 45.0, q + 2: 1.0})  # question token and trailing [SEP] dominate
    span = _single(context, starts, ends, max_answer_length=3, n_best=2)
    assert span.answer == "gamma"


def test_end_before_start_is_never_returned() -> None:
    context = "alpha beta gamma delta"
    q = QUESTION_TOKENS
    n = q + 5
    starts = peaked(n, {q + 3: 30.0, q + 0: 5.0})
    ends = peaked(n, {q + 1: 30.0, q + 2: 5.0})  # best end precedes best start
    span = _single(context, starts, ends, max_answer_length=4)
    assert span.answer == "alpha beta"  # start 0 with end 1 beats start 0 with end 2


def test_too_long_spans_are_never_returned() -> None:
    context = "alpha beta gamma delta epsilon zeta"
    q = QUESTION_TOKENS
    n = q + 7
    starts = peaked(n, {q + 0: 30.0, q + 3: 5.0})
    ends = peaked(n, {q + 5: 30.0, q + 4: 5.0})
    assert _single(context, starts, ends, max_answer_length=6).answer == context
    span = _single(context, starts, ends, max_answer_length=3)
    assert (span.answer, span.start, span.end) == ("delta epsilon zeta", 17, 35)  # start 3 with end 5 is 3 tokens


def test_padding_beyond_the_window_is_excluded_from_the_softmax() -> None:
    context = "alpha beta"
    window = Window(0, [None, (0, 5), (6, 10), None])
    padded_start = np.array([[0.0, 2.0, 1.0, 0.0, 99.0, 99.0]])
    padded_end = np.array([[0.0, 1.0, 2.0, 0.0, 99.0, 99.0]])
    (span,) = best_spans(
        contexts=[context], windows=[window], start_logits=padded_start, end_logits=padded_end, max_answer_length=5
    )
    p_s = np.exp([0.0, 2.0, 1.0, 0.0]) / np.exp([0.0, 2.0, 1.0, 0.0]).sum()
    p_e = np.exp([0.0, 1.0, 2.0, 0.0]) / np.exp([0.0, 1.0, 2.0, 0.0]).sum()
    assert span.answer == "alpha beta"
    assert span.score == pytest.approx(p_s[1] * p_e[2])
    with pytest.raises(ValueError, match="positions"):
        best_spans(contexts=[context], windows=[window], start_logits=[[0.0]], end_logits=[[0.0]], max_answer_length=5)


def test_examples_without_a_valid_span_get_the_empty_span() -> None:
    contexts = ["has an answer", "no context tokens", "no windows at all"]
    windows = [Window(0, [None, (0, 3), (4, 6), None]), Window(1, [None, None, None])]
    spans = best_spans(
        contexts=contexts,
        windows=windows,
        start_logits=[np.zeros(4), np.zeros(3)],
        end_logits=[np.zeros(4), np.zeros(3)],
        max_answer_length=3,
    )
    # All-equal logits: deterministic tie-break to the smallest start, then the smallest end.
    assert spans[0] == Span("has", pytest.approx(1 / 16), 0, 3)
    assert spans[1] == EMPTY_SPAN
    assert spans[2] == Span("", 0.0, 0, 0)


def test_window_from_encoding_keeps_only_context_offsets() -> None:
    w = window_from_encoding(3, [(0, 0), (0, 4), (0, 0), (0, 5), (6, 9), (0, 0)], [None, 0, None, 1, 1, None])
    assert w == Window(3, [None, None, None, (0, 5), (6, 9), None])


def _random_tokens(rng: np.random.Generator, context: str) -> list[tuple[int, int]]:
    """Word offsets, with some words split into two sub-word tokens."""
    out = []
    for a, b in word_offsets(context):
        if b - a >= 2 and rng.random() < 0.3:
            m = int(rng.integers(a + 1, b))
            out += [(a, m), (m, b)]
        else:
            out.append((a, b))
    return out


def _top(logits: np.ndarray, w: Window, n_best: int) -> set[int]:
    ctx = [i for i, o in enumerate(w.offsets) if o is not None]
    return set(sorted(ctx, key=lambda i: -logits[i])[:n_best])


def _brute_force(
    context: str, windows: list[Window], starts, ends, max_len: int, n_best: int | None = None
) -> tuple[float, int, int] | None:
    """Exhaustive search over (window, start, end); with n_best, only over the top-n context starts/ends."""
    best = None
    for w, s_logits, e_logits in zip(windows, starts, ends, strict=True):
        n = len(w.offsets)
        allowed_s = _top(s_logits[:n], w, n_best or n)
        allowed_e = _top(e_logits[:n], w, n_best or n)
        p_s = np.exp(s_logits[:n] - s_logits[:n].max())
        p_s /= p_s.sum()
        p_e = np.exp(e_logits[:n] - e_logits[:n].max())
        p_e /= p_e.sum()
        for s in range(n):
            for e in range(s, min(n, s + max_len)):
                if w.offsets[s] is None or w.offsets[e] is None or s not in allowed_s or e not in allowed_e:
                    continue
                score = p_s[s] * p_e[e]
                if best is None or score > best[0]:
                    best = (score, w.offsets[s][0], w.offsets[e][1])
    return best


def test_random_windows_match_brute_force_and_offsets_round_trip() -> None:
    rng = np.random.default_rng(1234)
    vocab = ["a", "bb", "ccc", "dddd", "e.", "ff,", "Gg", "hhh!", "i-j"]
    for _trial in range(150):
        n_examples = int(rng.integers(1, 4))
        contexts, windows = [], []
        for ex in range(n_examples):
            words = rng.choice(vocab, size=int(rng.integers(1, 40)))
            context = " ".join(words)
            contexts.append(context)
            toks = _random_tokens(rng, context)
            size = int(rng.integers(1, 16))
            stride = int(rng.integers(1, size + 1))
            windows += make_windows(ex, toks, size=size, stride=stride)
        order = rng.permutation(len(windows))  # windows of different examples interleaved
        windows = [windows[i] for i in order]
        width = max(len(w.offsets) for w in windows) + int(rng.integers(0, 3))
        starts = rng.normal(scale=3.0, size=(len(windows), width))
        ends = rng.normal(scale=3.0, size=(len(windows), width))
        max_len = int(rng.integers(1, 8))

        full = best_spans(
            contexts=contexts,
            windows=windows,
            start_logits=starts,
            end_logits=ends,
            max_answer_length=max_len,
            n_best=width,
        )
        n_best = int(rng.integers(1, 4))
        small = best_spans(
            contexts=contexts,
            windows=windows,
            start_logits=list(starts),
            end_logits=list(ends),
            max_answer_length=max_len,
            n_best=n_best,
        )
        for ex, context in enumerate(contexts):
            ex_windows = [i for i, w in enumerate(windows) if w.example_index == ex]
            expected = _brute_force(
                context, [windows[i] for i in ex_windows], starts[ex_windows], ends[ex_windows], max_len
            )
            assert expected is not None  # every window has at least one context token
            span = full[ex]
            assert span.score == pytest.approx(expected[0], rel=1e-12)
            assert (span.start, span.end) == expected[1:]
            assert span.answer  # the exhaustive search always finds a span: every window has context tokens
            for s in (span, small[ex]):
                assert context[s.start : s.end] == s.answer
                assert s.score <= expected[0] * (1 + 1e-12)
            # With few candidates the top starts may all follow the top ends: then, and only then, nothing is found.
            expected_small = _brute_force(
                context, [windows[i] for i in ex_windows], starts[ex_windows], ends[ex_windows], max_len, n_best
            )
            if expected_small is None:
                assert small[ex] == EMPTY_SPAN
            else:
                assert small[ex].score == pytest.approx(expected_small[0], rel=1e-12)
                assert (small[ex].start, small[ex].end) == expected_small[1:]
