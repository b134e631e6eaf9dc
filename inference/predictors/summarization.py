"""Summarization: documents in, summaries out (greedy or beam search, deterministic)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.predictors.base import Encoded, Predictor, adapter_rows, capped, features_of, one_row_each

# Generation runs in slices of this many documents: memory stays bounded for large requests.
PREDICT_BATCH = 16
# `run_order` cuts a batch into separate `generate` calls where padding would more than double its encoder tokens
# and pass 1024 padded tokens. A call's every decoding step has a fixed cost, so splitting pays only when the
# padding is large: on a t5-small-shaped model (1 thread, 32 new tokens), 4 documents of 30 tokens and 4 of 400 took
# 11.5 s in one call against 3.1 s + 6.5 s in two, while 4 of 30 and 4 of 120 took 5.2 s in one against 3.1 s +
# 3.9 s in two (README, "Serving").
MAX_WASTE = 1.0
MIN_TOKENS = 1024


class SummarizationPredictor(Predictor):
    """A list of documents in, a list of summaries out; each document gets the prefix it was trained with."""

    task = "summarization"

    def __init__(self, model_dir: Path, *, device: str = "cpu", model: Any = None, tokenizer: Any = None
                 ) -> None:
        super().__init__(model_dir, device=device, model=model, tokenizer=tokenizer)
        # Encoder inputs padded on the right keep every real token's position: batched equals unbatched.
        self.tokenizer.padding_side = "right"
        self.prefix = str(self.serving.get("prefix") or "")
        self.max_length = int(self.serving.get("max_length", 512))

    @classmethod
    def imported_serving(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {"prefix": "summarize: " if config.get("model_type") == "t5" else "",
                "max_length": capped(512, config), "max_target_length": 128}

    def encode(self, inputs: Sequence[str], **params: Any) -> list[Encoded]:
        enc = self.tokenizer([self.prefix + t for t in inputs], truncation=True, max_length=self.max_length)
        return one_row_each(enc, len(inputs))

    @classmethod
    def run_order(cls, encoded: Sequence[Encoded], **params: Any) -> list[list[int]]:
        """Inputs of similar length share a `generate` call, shortest first (`length_groups`): a short document is
        not padded to a long one's length (the encoder, and the decoder's cross-attention at every step, would
        compute it), and with the batcher answering each request as soon as its own group ends, it does not wait
        for the long one's call either."""
        from inference.batching import length_groups

        return length_groups([item.lengths[0] for item in encoded], max_waste=MAX_WASTE, min_tokens=MIN_TOKENS)

    @classmethod
    def padded_tokens(cls, encoded: Sequence[Encoded], *, max_new_tokens: int = 64, num_beams: int = 1,
                      **params: Any) -> int:
        """Per `run_order` group, each row (a beam each) holds the group's longest input and max_new_tokens."""
        lengths = [item.lengths[0] for item in encoded]
        return sum(len(group) * num_beams * (max(lengths[i] for i in group) + max_new_tokens)
                   for group in cls.run_order(encoded))

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
        """Greedy or beam search over encoder inputs padded on the right with an attention mask: a row's summary is
        the one it gets alone."""
        import torch

        out: list[str] = [""] * len(encoded)
        for group in self.run_order(encoded):
            for start in range(0, len(group), PREDICT_BATCH):
                chunk_ids = group[start:start + PREDICT_BATCH]
                chunk = [encoded[i] for i in chunk_ids]
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
                for i, item, row in zip(chunk_ids, chunk, generated, strict=True):
                    out[i] = self.by(item).tokenizer.decode(row, skip_special_tokens=True).strip()
        return out
