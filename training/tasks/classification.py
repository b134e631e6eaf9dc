"""Text classification (BERT/DistilBERT-style encoders with a sequence-classification head)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ValidationFailed
from registry.datafiles import DatasetProfile, profile_rows
from training.metrics import accuracy, f1_macro
from training.spec import CommonParams
from training.tasks.base import EventFn, Prepared, Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def label_text(value: Any) -> str:
    # Labels are always strings: an integer column gives "0", "1", …; floats like 1.0 give "1".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class ClassificationTask(Task):
    name = "classification"
    main_metric = "f1_macro"
    split_note = ", stratified by label (a label with one row stays in training)"

    def card_uses(self, serving: dict[str, Any]) -> str:
        labels = serving.get("labels")
        return (f"Assigns one of {len(labels) if isinstance(labels, list) else 'its'} labels to a text "
                f"(served by `{self.route}`). Scores are softmax probabilities over this label set only: a text "
                "unlike the training data still gets one of these labels, often with a high score.")

    def card_snippet(self, serving: dict[str, Any], *, load: list[str]) -> list[str]:
        return ["from transformers import pipeline", "", *load,
                'classify = pipeline("text-classification", model=model_id)',
                'print(classify(["great film"], top_k=None))']

    def check_rows(self, rows: Iterable[dict[str, Any]], *, uploaded: bool, what: str) -> None:
        self.check_profile(profile_rows(rows), {"text": "text", "label": "label"}, what=what)

    def check_profile(self, profile: DatasetProfile, columns: dict[str, str], *, what: str) -> None:
        text, label = columns["text"], columns["label"]
        problems = [
            (profile.first_row(text, other_than={"string"}), 0, "field 'text' is empty or not a string"),
            (profile.first_row(label, kinds={"null", "blank"}), 1, "field 'label' is empty"),
            (profile.first_row(label, kinds={"object", "list"}), 1, "field 'label' must be a single value"),
        ]
        found = sorted((hit[0], order, message) for hit, order, message in problems if hit is not None)
        if found:
            row, _, message = found[0]  # the first bad row, as a pass over the rows would find it
            raise ValidationFailed(f"{what} row {row}: {message}")
        counts = profile.value_counts(label)
        if counts is None:
            # Not counted (many distinct values, or long ones): more than one class, or the worker's pass over
            # the rows says otherwise.
            return
        labels = {label_text(value) for value, _ in counts}
        if len(labels) < 2:
            raise ValidationFailed(
                f"{what}: the label column has {len(labels)} class ({', '.join(sorted(labels))}); "
                "classification needs at least 2"
            )

    def split(
        self, rows: list[dict[str, Any]], *, ratio: float, seed: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Stratified: each class gives its share to validation; a class with one row stays in training."""
        by_class: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            by_class[label_text(row["label"])].append(i)
        rng = random.Random(seed)
        val: set[int] = set()
        for label in sorted(by_class):
            idx = by_class[label]
            rng.shuffle(idx)
            if len(idx) < 2:
                continue
            val.update(idx[: min(len(idx) - 1, max(1, round(len(idx) * ratio)))])
        if not val:
            raise ValidationFailed(f"{len(rows)} row(s) are too few to hold out a validation split")
        return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]

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
        from transformers import AutoConfig, AutoModelForSequenceClassification, DataCollatorWithPadding

        from training.modeling import effective_max_length, load_model

        labels = sorted({label_text(r["label"]) for r in train_rows} | {label_text(r["label"]) for r in eval_rows})
        label2id = {label: i for i, label in enumerate(labels)}
        id2label = dict(enumerate(labels))

        config = AutoConfig.from_pretrained(model_source, trust_remote_code=False)
        base_labels = [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else []
        keeps_head = Path(model_source).is_dir() and set(base_labels) == set(labels) and (
            getattr(config, "problem_type", None) in (None, "single_label_classification")
        )
        if keeps_head:
            # Same label set as the registered model: keep its head, in its own label order.
            label2id = {label: int(i) for i, label in config.id2label.items()}
            label2id = {label: i for label, i in sorted(((lab, int(i)) for lab, i in label2id.items()))}
            id2label = {i: label for label, i in label2id.items()}
            model = load_model(AutoModelForSequenceClassification, model_source)
        else:
            if Path(model_source).is_dir() and base_labels:
                on_event(
                    "log",
                    f"label set differs from the base model's ({', '.join(base_labels)}): "
                    "classification head re-created",
                    {"base_labels": base_labels, "labels": labels},
                )
            model = load_model(
                AutoModelForSequenceClassification,
                model_source,
                num_labels=len(labels),
                id2label=id2label,
                label2id=label2id,
                ignore_mismatched_sizes=True,
            )
        model.config.id2label = {int(i): lab for i, lab in id2label.items()}
        model.config.label2id = {lab: int(i) for i, lab in id2label.items()}
        model.config.problem_type = "single_label_classification"
        max_length = effective_max_length(tokenizer, params.max_length)
        return Prepared(
            model=model,
            train=_encoded(tokenizer, train_rows, label2id=label2id, max_length=max_length),
            eval=_encoded(tokenizer, eval_rows, label2id=label2id, max_length=max_length),
            collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=_compute_metrics,
            serving_params={"labels": labels, "max_length": max_length},
        )

    def prepare_eval(self, *, model_source: str, tokenizer: PreTrainedTokenizerBase, params: CommonParams,
                     rows: list[dict[str, Any]]) -> Prepared:
        """The model's own head: label ids come from its config, and a label it was not trained on is an error
        that names it (a re-created head would score a different model)."""
        from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

        from training.modeling import effective_max_length, load_model

        model = load_model(AutoModelForSequenceClassification, model_source)
        label2id = {str(label): int(i) for label, i in (model.config.label2id or {}).items()}
        unknown = sorted({label_text(r["label"]) for r in rows} - set(label2id))
        if unknown:
            shown = ", ".join(repr(u[:100]) for u in unknown[:10]) + (" …" if len(unknown) > 10 else "")
            raise ValidationFailed(f"the evaluation data has label(s) the model was not trained on: {shown}; "
                                   f"its labels are: {', '.join(sorted(label2id))}")
        ds = _encoded(tokenizer, rows, label2id=label2id, max_length=effective_max_length(tokenizer, params.max_length))
        return Prepared(model=model, train=ds, eval=ds, collator=DataCollatorWithPadding(tokenizer),
                        compute_metrics=_compute_metrics)

    def data_facts(self, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]) -> dict[str, Any]:
        def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
            found: dict[str, int] = defaultdict(int)
            for row in rows:
                found[label_text(row["label"])] += 1
            return dict(sorted(found.items()))

        return {"label_counts": {"train": counts(train_rows), "validation": counts(eval_rows)}}

    def preprocessing(self, *, serving: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        return {
            "tokenizer": type(tokenizer).__name__,
            "max_length": serving.get("max_length"),
            "truncation": "texts longer than max_length tokens are cut at max_length (training and serving)",
            "padding": "dynamic: each batch is padded to its longest sequence (DataCollatorWithPadding)",
            "labels": "label values as strings, sorted, numbered from 0 (config.id2label)",
        }


def _encoded(tokenizer: Any, rows: list[dict[str, Any]], *, label2id: dict[str, int], max_length: int) -> Any:
    import datasets

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["labels"] = [label2id[label_text(x)] for x in batch["label"]]
        return enc

    ds = datasets.Dataset.from_dict({"text": [r["text"] for r in rows],
                                     "label": [label_text(r["label"]) for r in rows]})
    return ds.map(encode, batched=True, remove_columns=["text", "label"])


def _compute_metrics(pred: Any) -> dict[str, float]:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    y_pred = np.argmax(logits, axis=-1)
    return {"accuracy": accuracy(pred.label_ids, y_pred), "f1_macro": f1_macro(pred.label_ids, y_pred)}

