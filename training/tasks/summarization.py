"""Summarization: sequence-to-sequence fine-tuning (T5, BART, Pegasus, …) evaluated with ROUGE."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ValidationFailed
from registry.datafiles import PY_NAMES, DatasetProfile, profile_rows
from training.spec import CommonParams, SummarizationParams
from training.tasks.base import EventFn, Prepared, Task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Seq2SeqTrainer, Seq2SeqTrainingArguments

T5_PREFIX = "summarize: "


def resolve_prefix(params: SummarizationParams, model_type: str | None, model_source: str) -> str:
    """The input prefix: the user's, else the one a registered base model was trained with, else T5's default."""
    if params.prefix is not None:
        return params.prefix
    if Path(model_source).is_dir():
        from training.params_file import read_training_params

        # Continuing from a registered model: keep the prefix it learned with, or its outputs shift.
        previous = read_training_params(Path(model_source)).get("serving", {}).get("prefix")
        if isinstance(previous, str):
            return previous
    return T5_PREFIX if model_type == "t5" else ""


def ensure_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """`generate` needs pad, eos and a decoder start token; configs built by hand often lack some."""
    config = model.config
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    if config.decoder_start_token_id is None:
        # T5 starts decoding from its pad token; BART-likes declare their own start token in the config.
        bos = getattr(config, "bos_token_id", None)
        config.decoder_start_token_id = config.pad_token_id if config.model_type == "t5" or bos is None else bos
    gen = model.generation_config
    for key in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
        if getattr(gen, key, None) is None:
            setattr(gen, key, getattr(config, key))
    # Sampling settings in a base model's generation config would make evaluation non-deterministic.
    gen.do_sample = False


class SummarizationTask(Task):
    name = "summarization"
    main_metric = "rougeLsum"

    def check_rows(self, rows: Iterable[dict[str, Any]], *, uploaded: bool, what: str) -> None:
        self.check_profile(profile_rows(rows), {"document": "document", "summary": "summary"}, what=what)

    def check_profile(self, profile: DatasetProfile, columns: dict[str, str], *, what: str) -> None:
        if profile.num_rows == 0:
            raise ValidationFailed(f"{what}: no rows; summarization needs document/summary pairs")
        found = []
        for order, field in enumerate(("document", "summary")):
            hit = profile.first_row(columns[field], other_than={"string"})
            if hit is not None:
                row, kind = hit
                problem = {"null": "missing", "blank": "empty"}.get(kind) or \
                    f"not a string ({PY_NAMES.get(kind, kind)})"
                found.append((row, order, f"field '{field}' is {problem}"))
        if found:
            row, _, message = min(found)  # the first bad row, as a pass over the rows would find it
            raise ValidationFailed(f"{what} row {row}: {message}")

    def training_args_extra(self, params: CommonParams) -> dict[str, Any]:
        assert isinstance(params, SummarizationParams)
        return {
            "predict_with_generate": True,
            # `max_length` counts the decoder start token, so +1 lets a prediction be as long as a target.
            "generation_max_length": params.max_target_length + 1,
            "generation_num_beams": params.eval_num_beams,
        }

    def build_args(self, **kwargs: Any) -> Seq2SeqTrainingArguments:
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments(**kwargs)

    def make_trainer(self, **kwargs: Any) -> Seq2SeqTrainer:
        import copy

        from transformers import Seq2SeqTrainer

        # Evaluating with `generate` fills the model's generation config with every default (max_length 20,
        # top_k 50, …); saved like that, each served request warns that max_length and max_new_tokens clash.
        clean = copy.deepcopy(kwargs["model"].generation_config)

        class _Trainer(Seq2SeqTrainer):
            def _save(self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None) -> None:
                used = self.model.generation_config
                self.model.generation_config = clean
                try:
                    super()._save(output_dir, state_dict=state_dict)
                finally:
                    self.model.generation_config = used

        return _Trainer(**kwargs)

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
        from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq

        from training.modeling import effective_max_length, load_model
        from training.text_metrics import rouge

        assert isinstance(params, SummarizationParams)
        model = load_model(AutoModelForSeq2SeqLM, model_source)
        ensure_generation_ids(model, tokenizer)
        prefix = resolve_prefix(params, model.config.model_type, model_source)
        max_length = effective_max_length(tokenizer, params.max_length)
        max_target_length = effective_max_length(tokenizer, params.max_target_length)
        pad_id = tokenizer.pad_token_id

        def encode(batch: dict[str, list[str]]) -> dict[str, Any]:
            enc = tokenizer([prefix + d for d in batch["document"]], truncation=True, max_length=max_length)
            targets = tokenizer(text_target=batch["summary"], truncation=True, max_length=max_target_length)
            enc["labels"] = targets["input_ids"]
            return enc

        def to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
            ds = datasets.Dataset.from_dict(
                {"document": [r["document"] for r in rows], "summary": [r["summary"] for r in rows]}
            )
            return ds.map(encode, batched=True, remove_columns=["document", "summary"])

        references = [r["summary"].strip() for r in eval_rows]

        def compute_metrics(pred: Any) -> dict[str, float]:
            tokens = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
            # Batches are concatenated with -100 padding, which is no token id: decode it as padding.
            tokens = np.where(tokens < 0, pad_id, tokens)
            predictions = [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
            # The eval set is not shuffled, so the untruncated reference texts line up with the predictions.
            refs = references if len(references) == len(predictions) else [
                t.strip() for t in tokenizer.batch_decode(np.where(pred.label_ids < 0, pad_id, pred.label_ids),
                                                          skip_special_tokens=True)
            ]
            return rouge(predictions, refs)

        if prefix:
            on_event("log", f"inputs are prefixed with {prefix!r}", {"prefix": prefix})
        return Prepared(
            model=model,
            train=to_dataset(train_rows),
            eval=to_dataset(eval_rows),
            collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
            compute_metrics=compute_metrics,
            serving_params={"prefix": prefix, "max_length": max_length, "max_target_length": max_target_length},
        )


    def card_uses(self, serving: dict[str, Any]) -> str:
        return (f"Writes an abstractive summary of a document (served by `{self.route}`). A summary may state "
                "things the document does not say; check it before relying on it.")

    def card_snippet(self, serving: dict[str, Any], *, load: list[str]) -> list[str]:
        prefix = serving.get("prefix") or ""
        return [
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer", "", *load,
            "tokenizer = AutoTokenizer.from_pretrained(model_id)",
            "model = AutoModelForSeq2SeqLM.from_pretrained(model_id)",
            'document = "A long document ..."',
            f"inputs = tokenizer([{json.dumps(prefix)} + document], truncation=True, "
            f"max_length={serving.get('max_length', 512)}, return_tensors=\"pt\")"
            + ("  # the prefix it was trained with" if prefix else ""),
            "print(tokenizer.batch_decode(model.generate(**inputs, max_new_tokens=64), skip_special_tokens=True))"]

    def preprocessing(self, *, serving: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        prefix = serving.get("prefix") or ""
        return {
            "tokenizer": type(tokenizer).__name__,
            "prefix": prefix,
            "prefix_note": (f"every document is prefixed with {prefix!r} (T5-style task prefix), in training and "
                            "serving alike") if prefix else "no input prefix",
            "max_length": serving.get("max_length"),
            "max_target_length": serving.get("max_target_length"),
            "truncation": "documents are cut at max_length tokens, summaries at max_target_length tokens",
            "padding": "dynamic: inputs padded to the longest in each batch, labels padded with -100 (ignored by "
                       "the loss) (DataCollatorForSeq2Seq)",
        }

