"""Text classification: texts in, ranked label lists out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ValidationFailed
from inference.predictors.base import Encoded, Predictor, adapter_rows, capped, features_of, one_row_each


def config_labels(config: dict[str, Any]) -> list[str]:
    """The label names of a config.json (`id2label`), checked."""
    id2label = config.get("id2label")
    if id2label is None:
        return ["LABEL_0", "LABEL_1"]  # transformers' own default for a config without labels
    if not isinstance(id2label, dict) or not id2label:
        raise ValidationFailed("config.json id2label must be an object of label ids to names")
    try:
        by_id = {int(k): v for k, v in id2label.items()}
    except ValueError as exc:
        raise ValidationFailed("config.json id2label keys must be label ids 0, 1, …") from exc
    if sorted(by_id) != list(range(len(by_id))) or not all(isinstance(v, str) and v for v in by_id.values()):
        raise ValidationFailed("config.json id2label must map ids 0…n-1 to non-empty names")
    return [str(by_id[i]) for i in range(len(by_id))]


class ClassificationPredictor(Predictor):
    """A list of texts in, a list of ranked label lists ({"label", "score"}, softmax probabilities) out."""

    task = "classification"
    zero_wait = True
    onnx_outputs = ("logits",)
    onnx_output_class = "SequenceClassifierOutput"

    def __init__(self, model_dir: Path, *, device: str = "cpu", model: Any = None, tokenizer: Any = None
                 ) -> None:
        super().__init__(model_dir, device=device, model=model, tokenizer=tokenizer)
        self.max_length = int(self.serving.get("max_length", 512))
        self.id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}

    @classmethod
    def imported_serving(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {"labels": config_labels(config), "max_length": capped(512, config)}

    def encode(self, inputs: Sequence[str], **params: Any) -> list[Encoded]:
        enc = self.tokenizer(list(inputs), truncation=True, max_length=self.max_length)
        return one_row_each(enc, len(inputs))

    def predict(self, encoded: Sequence[Encoded], *, top_k: int | None = 1) -> list[list[dict[str, Any]]]:
        # Adapters of one base may have label sets of different sizes: peft gathers a mixed batch's head outputs
        # row by row into one tensor, so only heads of one width share a forward pass.
        by_width: dict[int, list[int]] = {}
        for index, item in enumerate(encoded):
            by_width.setdefault(len(self.by(item).id2label), []).append(index)
        ranked: list[list[dict[str, Any]]] = [[] for _ in encoded]
        for indices in by_width.values():
            items = [encoded[i] for i in indices]
            for index, row in zip(indices, self._probabilities(items), strict=True):
                id2label = self.by(encoded[index]).id2label
                k = len(row) if top_k is None else min(top_k, len(row))
                order = np.argsort(-row, kind="stable")[:k]
                ranked[index] = [{"label": id2label[int(i)], "score": float(row[i])} for i in order]
        return ranked

    def _probabilities(self, encoded: Sequence[Encoded]) -> np.ndarray:
        import torch

        from inference.batching import grouped_forward

        features, owners = features_of(encoded)  # one row per text
        probs = np.empty((len(encoded), len(self.by(encoded[0]).id2label)), dtype=np.float32)
        # Similar lengths forward together: padding to the longest of a mixed batch doubles the compute.
        with torch.inference_mode():
            for group, out in grouped_forward(self.tokenizer, self.model, features, self.device,
                                              adapters=adapter_rows(encoded, owners)):
                probs[group] = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()
        return probs
