"""Extractive question answering: (question, context) pairs in, best spans out.

A context longer than the model's window is read in overlapping windows (`max_length`, `doc_stride`, as in
training); the shared numpy post-processing (training/qa_postprocess.py) picks the best span over an input's
windows and maps it back to character offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.predictors.base import FEATURES, Encoded, Predictor, adapter_rows, capped, features_of


@dataclass(frozen=True)
class Context:
    """What post-processing needs of one input: its context and, per window, each token's character offsets."""

    text: str
    offsets: list[Any]  # per window: training.qa_postprocess.Offsets


class QuestionAnsweringPredictor(Predictor):
    """(question, context) pairs in, best spans out: {"answer", "score", "start", "end"}."""

    task = "question-answering"
    zero_wait = True
    sample_input = ("warm-up", "warm-up")
    onnx_outputs = ("start_logits", "end_logits")
    onnx_output_class = "QuestionAnsweringModelOutput"

    def __init__(self, model_dir: Path, *, device: str = "cpu", model: Any = None, tokenizer: Any = None
                 ) -> None:
        super().__init__(model_dir, device=device, model=model, tokenizer=tokenizer)
        self.max_length = int(self.serving.get("max_length", 384))
        self.doc_stride = int(self.serving.get("doc_stride", 128))
        self.max_answer_length = int(self.serving.get("max_answer_length", 30))

    @classmethod
    def imported_serving(cls, config: dict[str, Any]) -> dict[str, Any]:
        max_length = capped(384, config)
        return {"max_length": max_length, "doc_stride": min(128, max_length // 4), "max_answer_length": 30}

    def encode(self, inputs: Sequence[tuple[str, str]], **params: Any) -> list[Encoded]:
        from training.qa_postprocess import encode_windows, window_from_encoding

        contexts = [c for _, c in inputs]
        enc = encode_windows(self.tokenizer, [q for q, _ in inputs], contexts, max_length=self.max_length,
                             stride=self.doc_stride)
        keys = [k for k in FEATURES if k in enc]
        out = [Encoded([], Context(context, [])) for context in contexts]
        for i, offsets in enumerate(enc["offset_mapping"]):
            item = out[int(enc["overflow_to_sample_mapping"][i])]
            item.rows.append({k: enc[k][i] for k in keys})
            item.meta.offsets.append(window_from_encoding(0, offsets, enc.sequence_ids(i)).offsets)
        return out

    def predict(self, encoded: Sequence[Encoded], **params: Any) -> list[dict[str, Any]]:
        import torch

        from inference.batching import grouped_forward
        from training.qa_postprocess import Window, best_spans

        features, owners = features_of(encoded)  # one row per window, in the order of the windows below
        windows = [Window(index, offsets) for index, item in enumerate(encoded) for offsets in item.meta.offsets]
        start_logits: list[np.ndarray] = [np.empty(0)] * len(windows)
        end_logits: list[np.ndarray] = [np.empty(0)] * len(windows)
        # Windows of similar length forward together (rows come back ragged; post-processing reads each
        # window's own positions only).
        with torch.inference_mode():
            for group, out in grouped_forward(self.tokenizer, self.model, features, self.device,
                                              adapters=adapter_rows(encoded, owners)):
                starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
                for row, i in enumerate(group):
                    start_logits[i], end_logits[i] = starts[row], ends[row]
        # Post-processed per answer length (adapters of one base in one batch may have been trained with others).
        by_length: dict[int, list[int]] = {}
        for index, item in enumerate(encoded):
            by_length.setdefault(self.by(item).max_answer_length, []).append(index)
        answers: list[dict[str, Any]] = [{} for _ in encoded]
        for max_answer_length, indices in by_length.items():
            renumber = {index: n for n, index in enumerate(indices)}
            rows = [w for w, window in enumerate(windows) if window.example_index in renumber]
            spans = best_spans(contexts=[encoded[i].meta.text for i in indices],
                               windows=[Window(renumber[windows[w].example_index], windows[w].offsets) for w in rows],
                               start_logits=[start_logits[w] for w in rows], end_logits=[end_logits[w] for w in rows],
                               max_answer_length=max_answer_length)
            for index, s in zip(indices, spans, strict=True):
                answers[index] = {"answer": s.answer, "score": s.score, "start": s.start, "end": s.end}
        return answers
