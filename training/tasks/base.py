"""The shape every task module has. Adding a task = one module implementing `Task` + one registry entry (its
`TaskInfo` in core/tasks.py, which names this module's class and the task's params model and predictor)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.tasks import TASKS
from training.spec import CommonParams

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

    from registry.datafiles import DatasetProfile

EventFn = Callable[[str, str, dict[str, Any]], None]


@dataclass
class Prepared:
    """What a task hands the generic runner."""

    model: PreTrainedModel
    train: datasets.Dataset
    eval: datasets.Dataset
    collator: Any
    compute_metrics: Callable[[Any], dict[str, float]] | None
    # Saved into training_params.json so that serving reads the same choices.
    serving_params: dict[str, Any] = field(default_factory=dict)
    eval_rows: list[dict[str, Any]] = field(default_factory=list)


class Task(ABC):
    name: str
    main_metric: str
    greater_is_better: bool = True
    # True when a dataset's profile cannot answer every check (QA answer offsets): POST /jobs then reads the
    # rows through check_rows, once per dataset and column mapping.
    needs_rows: bool = False

    @abstractmethod
    def check_rows(self, rows: Iterable[dict[str, Any]], *, uploaded: bool, what: str) -> None:
        """Raise ValidationFailed naming the bad field or row. `rows` use the task's field names."""

    @abstractmethod
    def check_profile(self, profile: DatasetProfile, columns: dict[str, str], *, what: str) -> None:
        """What can be checked from a dataset's stored profile (`columns` maps field → column); raise
        ValidationFailed like check_rows does."""

    def split(
        self, rows: list[dict[str, Any]], *, ratio: float, seed: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        import random

        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(len(rows) * ratio))
        if n_val >= len(rows):
            from core.errors import ValidationFailed

            raise ValidationFailed(f"{len(rows)} row(s) are too few to hold out a validation split")
        val = set(order[:n_val])
        return [r for i, r in enumerate(rows) if i not in val], [rows[i] for i in sorted(val)]

    @abstractmethod
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
        """Load the model, tokenize both splits, and give the collator and metrics."""

    def prepare_eval(self, *, model_source: str, tokenizer: PreTrainedTokenizerBase, params: CommonParams,
                     rows: list[dict[str, Any]]) -> Prepared:
        """A trained model as it is, with `rows` tokenized and scored as training's validation split is. The
        default runs `prepare` with the rows as both splits; a task whose `prepare` changes the model to fit the
        data (a classification head for another label set) overrides it."""
        return self.prepare(model_source=model_source, tokenizer=tokenizer, params=params, train_rows=rows,
                            eval_rows=rows, on_event=lambda *_: None)

    def data_facts(self, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]) -> dict[str, Any]:
        """What the model card says about the rows beyond their counts (classification: label counts)."""
        return {}

    @abstractmethod
    def preprocessing(self, *, serving: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        """How `prepare` turned rows into model inputs, for the model card: {fact: value}, e.g. max_length,
        truncation, padding (`serving` is the Prepared.serving_params it returned)."""

    # The model card's words for the task (training/model_card.py); `serving` is training_params.json's "serving".

    # How the held-out validation split is chosen, beyond "at random" (", stratified by label").
    split_note: str = ""

    @property
    def route(self) -> str:
        """The predict endpoint that serves the task's models."""
        return TASKS[self.name].route

    def card_uses(self, serving: dict[str, Any]) -> str:
        """What the model does and how it can mislead, one paragraph ("Intended uses and limitations")."""
        return f"A {TASKS[self.name].title} model (served by `{self.route}`)."

    def card_context_length(self, serving: dict[str, Any]) -> str:
        """How long an input may be, as the card's "Context length" says it."""
        max_length = serving.get("max_length")
        return "not recorded" if max_length is None else f"{max_length} tokens; longer inputs are truncated"

    def card_snippet(self, serving: dict[str, Any], *, load: list[str]) -> list[str]:
        """Python lines that run the saved folder with plain `transformers` ("How to use"); `load` sets model_id."""
        auto = TASKS[self.name].auto_class
        return [f"from transformers import {auto}, AutoTokenizer", "", *load,
                "tokenizer = AutoTokenizer.from_pretrained(model_id)", f"model = {auto}.from_pretrained(model_id)"]

    def derived_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics computed from the evaluation's, e.g. perplexity from eval_loss."""
        return {}

    def make_trainer(self, **kwargs: Any) -> Trainer:
        from transformers import Trainer

        return Trainer(**kwargs)

    def training_args_extra(self, params: CommonParams) -> dict[str, Any]:
        return {}

    def build_args(self, **kwargs: Any) -> TrainingArguments:
        from transformers import TrainingArguments

        return TrainingArguments(**kwargs)
