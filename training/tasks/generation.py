"""Causal-LM fine-tuning (GPT-2 style) on a text corpus, served by /generate.

Texts are tokenized, joined with the EOS token and packed into blocks of `block_size`, so no token
is spent on padding during training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from core.errors import ValidationFailed
from registry.datafiles import DatasetProfile, profile_rows
from training.spec import CommonParams, GenerationParams
from training.tasks.base import EventFn, Prepared, Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class GenerationTask(Task):
    name = "generation"
    main_metric = "eval_loss"
    greater_is_better = False

    def check_rows(self, rows: Iterable[dict[str, Any]], *, uploaded: bool, what: str) -> None:
        self.check_profile(profile_rows(rows), {"text": "text"}, what=what)

    def check_profile(self, profile: DatasetProfile, columns: dict[str, str], *, what: str) -> None:
        bad = profile.first_row(columns["text"], other_than={"string", "blank"})
        if bad is not None:
            raise ValidationFailed(f"{what} row {bad[0]}: field 'text' must be a string")
        if profile.first_row(columns["text"], kinds={"string"}) is None:
            raise ValidationFailed(f"{what}: the corpus is empty (every 'text' is blank)")

    def prepare(
        self,
        *,
        model_source: str,
        tokenizer: PreTrainedTokenizerBase,
        params: CommonParams,
        train_rows: list[dict[str, Any]],
        eval_rows: list[dict[str, Any]],
        on_event: EventFn,
    ) -> Prepared:
        import datasets
        from transformers import AutoModelForCausalLM, default_data_collator

        from training.modeling import ensure_pad_token, load_model

        assert isinstance(params, GenerationParams)
        if tokenizer.eos_token_id is None:
            raise ValidationFailed("the base model's tokenizer has no EOS token; pick a causal-LM model")
        ensure_pad_token(tokenizer)
        model = load_model(AutoModelForCausalLM, model_source)
        model.config.pad_token_id = tokenizer.pad_token_id
        limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        block = min(params.block_size, int(limit)) if limit else params.block_size

        def pack(rows: list[dict[str, Any]], what: str) -> datasets.Dataset:
            ids: list[int] = []
            for row in rows:
                if row["text"].strip():
                    ids += tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            n = len(ids) // block
            if n == 0:
                raise ValidationFailed(
                    f"the {what} text has {len(ids)} tokens, fewer than one block of block_size {block}; "
                    "add text or lower block_size")
            blocks = [ids[i * block:(i + 1) * block] for i in range(n)]
            # Every block is full, so nothing is padded and every token is a target, the EOS between texts
            # included (a collator that masks pad tokens would drop it: GPT-2's pad token is its EOS, and a
            # model that never sees EOS as a target never learns to end a text).
            return datasets.Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * block] * n,
                                               "labels": [list(b) for b in blocks]})

        return Prepared(
            model=model,
            train=pack(train_rows, "training"),
            eval=pack(eval_rows, "validation"),
            collator=default_data_collator,
            compute_metrics=None,
            serving_params={"block_size": block},
        )

    def data_facts(self, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"blank_texts_skipped": {"train": sum(1 for r in train_rows if not r["text"].strip()),
                                        "validation": sum(1 for r in eval_rows if not r["text"].strip())}}

    def card_uses(self, serving: dict[str, Any]) -> str:
        return (f"Continues a prompt in the style of its training corpus (served by `{self.route}`). It is a "
                "plain language model: not instruction-tuned and not safety-tuned; its text may be false or "
                "offensive.")

    def card_context_length(self, serving: dict[str, Any]) -> str:
        block = serving.get("block_size")
        return (f"trained on blocks of {block} tokens; prompts plus generated tokens beyond the model's position "
                "limit are refused" if block else "not recorded")

    def card_snippet(self, serving: dict[str, Any], *, load: list[str]) -> list[str]:
        return [
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "", *load,
            "tokenizer = AutoTokenizer.from_pretrained(model_id)",
            "model = AutoModelForCausalLM.from_pretrained(model_id)",
            'inputs = tokenizer("Once upon a time", return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0], skip_special_tokens=True))"]

    def preprocessing(self, *, serving: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        return {
            "tokenizer": type(tokenizer).__name__,
            "block_size": serving.get("block_size"),
            "eos_handling": f"each text is tokenized without special tokens and followed by EOS "
                            f"({tokenizer.eos_token!r}), so the model learns where a text ends",
            "packing": "the token stream is cut into blocks of block_size tokens; the tokens after the last full "
                       "block are not used; blank texts are skipped",
            "padding": f"none in training (every block is full); serving pads with {tokenizer.pad_token!r}",
            "truncation": "none: long texts span several blocks",
        }

    def derived_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        loss = metrics.get("eval_loss")
        if loss is None:
            return {}
        return {"perplexity": math.exp(loss) if loss < 700 else float("inf")}

