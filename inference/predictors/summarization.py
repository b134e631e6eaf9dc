"""Summarization: documents in, summaries out (greedy or beam search, deterministic)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.predictors.base import Encoded, Predictor, adapter_rows, features_of, one_row_each

# Generation runs in slices of this many documents: memory stays bounded for large requests.
PREDICT_BATCH = 16


class SummarizationPredictor(Predictor):
    """A list of documents in, a list of summaries out; each document gets the prefix it was trained with."""

    task = "summarization"
    auto_class = "AutoModelForSeq2SeqLM"

    def __init__(self, model_dir: Path, *, device: str = "cpu", model: Any = None, tokenizer: Any = None
                 ) -> None:
        super().__init__(model_dir, device=device, model=model, tokenizer=tokenizer)
        # Encoder inputs padded on the right keep every real token's position: batched equals unbatched.
        self.tokenizer.padding_side = "right"
        self.prefix = str(self.serving.get("prefix") or "")
        self.max_length = int(self.serving.get("max_length", 512))

    def encode(self, inputs: Sequence[str], **params: Any) -> list[Encoded]:
        enc = self.tokenizer([self.prefix + t for t in inputs], truncation=True, max_length=self.max_length)
        return one_row_each(enc, len(inputs))

    def predict(
        self,
        encoded: Sequence[Encoded],
        *,
        max_new_tokens: int = 64,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> list[str]:
        import torch

        out: list[str] = []
        for start in range(0, len(encoded), PREDICT_BATCH):
            chunk = encoded[start:start + PREDICT_BATCH]
            features, owners = features_of(chunk)
            batch = self.tokenizer.pad(features, return_tensors="pt")
            adapters = adapter_rows(chunk, owners)  # adapters of one base: each row its own (peft, beams too)
            with torch.inference_mode():
                generated = self.model.generate(
                    **({} if adapters is None else {"adapter_names": adapters}),
                    **{k: v.to(self.device) for k, v in batch.items()},
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens,
                    num_beams=num_beams,
                    length_penalty=length_penalty,
                    no_repeat_ngram_size=no_repeat_ngram_size,
                    do_sample=False,
                )
            out += [self.by(item).tokenizer.decode(row, skip_special_tokens=True).strip()
                    for item, row in zip(chunk, generated, strict=True)]
        return out
