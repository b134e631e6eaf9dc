"""One descriptor per task: every fact about a task that more than one package needs, in one place.

`TASKS` is the registry. Adding a task is one entry here plus the modules its entry names by dotted path (its
training `Task`, its serving `Predictor`, its hyperparameters model); everything that is spelled per task elsewhere
(the job spec's params and column fields, the predict endpoint serving the task, the model card's pipeline tag, the
LoRA task type, which archives are imported as the task, …) is read from here.

Plain data only, no imports beyond the standard library: the API process, the registry and the worker all read it,
so it lives in `core/` (every package may import `core/`, and `core/` imports none of them). The heavy classes are
named as `"module:attribute"` strings and imported by the package that uses them (`load`), on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Literal, TypeVar

Architecture = Literal["encoder", "encoder-decoder", "decoder"]
T = TypeVar("T")


@dataclass(frozen=True)
class TaskInfo:
    name: str
    """The `task` of POST /jobs, of a registered model and of training_params.json."""
    title: str
    """How the model card names the task in a sentence ("A text classification model")."""
    route: str
    """The predict endpoint that serves the task's models."""
    fields: Mapping[str, str]
    """A job's column fields → their default columns (POST /jobs `columns`), in the order they are listed."""
    params: str
    """The hyperparameters model (a training.spec.CommonParams subclass), as "module:class"."""
    trainer: str
    """The training task (a training.tasks.base.Task subclass), as "module:class"."""
    predictor: str
    """The serving predictor (an inference.predictors.base.Predictor subclass), as "module:class"."""
    eval_metrics: tuple[str, ...]
    """The metrics an evaluation gives (the keys of a version's metrics.json, less the training-only ones)."""
    pipeline_tag: str
    """The Hugging Face Hub's pipeline tag (model card front matter)."""
    auto_class: str
    """The transformers `AutoModelFor…` class a version's folder loads with."""
    architecture: Architecture
    """What the model is: an encoder with a task head, a seq2seq encoder-decoder, or a decoder-only (causal) LM."""
    heads: tuple[str, ...]
    """`config.architectures` suffixes of the heads served as this task (an imported archive's task is told by
    them). A seq2seq task's heads count only for a config with `is_encoder_decoder`, a decoder's only without it:
    vision, speech and multimodal models have `…ForConditionalGeneration` heads too."""
    peft_task_type: str | None
    """peft's `TaskType` name for a LoRA job; None for a plain PeftModel (see training/lora.py)."""
    lora_head: bool
    """Whether a LoRA job trains the task head whole and saves it with the adapter (peft `modules_to_save`)."""
    example: Mapping[str, Any] = field(default_factory=dict)
    """A request body for `route` (without `model`), for the model card's "How to use"."""

    @property
    def endpoint(self) -> str:
        """`route` without its slash: "classify"."""
        return self.route.lstrip("/")

    @property
    def trainer_module(self) -> str:
        return self.trainer.partition(":")[0]


TASKS: dict[str, TaskInfo] = {
    info.name: info
    for info in (
        TaskInfo(
            name="classification", title="text classification", route="/classify",
            fields={"text": "text", "label": "label"},
            params="training.spec:ClassificationParams",
            trainer="training.tasks.classification:ClassificationTask",
            predictor="inference.predictors.classification:ClassificationPredictor",
            eval_metrics=("accuracy", "f1_macro", "eval_loss"),
            pipeline_tag="text-classification", auto_class="AutoModelForSequenceClassification",
            architecture="encoder", heads=("ForSequenceClassification",),
            peft_task_type=None, lora_head=True,
            example={"inputs": ["great film"]},
        ),
        TaskInfo(
            name="question-answering", title="extractive question answering", route="/answer",
            fields={"question": "question", "context": "context", "answers": "answers"},
            params="training.spec:QuestionAnsweringParams",
            trainer="training.tasks.question_answering:QuestionAnsweringTask",
            predictor="inference.predictors.question_answering:QuestionAnsweringPredictor",
            eval_metrics=("exact_match", "f1", "eval_loss"),
            pipeline_tag="question-answering", auto_class="AutoModelForQuestionAnswering",
            architecture="encoder", heads=("ForQuestionAnswering",),
            peft_task_type=None, lora_head=True,
            example={"question": "Who won?", "context": "The Broncos won the game."},
        ),
        TaskInfo(
            name="summarization", title="summarization", route="/summarize",
            fields={"document": "document", "summary": "summary"},
            params="training.spec:SummarizationParams",
            trainer="training.tasks.summarization:SummarizationTask",
            predictor="inference.predictors.summarization:SummarizationPredictor",
            eval_metrics=("rouge1", "rouge2", "rougeL", "rougeLsum", "eval_loss"),
            pipeline_tag="summarization", auto_class="AutoModelForSeq2SeqLM",
            architecture="encoder-decoder", heads=("ForConditionalGeneration", "ForSeq2SeqLM"),
            peft_task_type="SEQ_2_SEQ_LM", lora_head=False,
            example={"inputs": ["A long document ..."]},
        ),
        TaskInfo(
            name="generation", title="text generation", route="/generate",
            fields={"text": "text"},
            params="training.spec:GenerationParams",
            trainer="training.tasks.generation:GenerationTask",
            predictor="inference.predictors.generation:GenerationPredictor",
            eval_metrics=("eval_loss", "perplexity"),
            pipeline_tag="text-generation", auto_class="AutoModelForCausalLM",
            architecture="decoder", heads=("ForCausalLM", "LMHeadModel"),
            peft_task_type="CAUSAL_LM", lora_head=False,
            example={"prompt": "Once upon a time", "max_new_tokens": 32},
        ),
    )
}


def load(path: str) -> Any:
    """The object a "module:attribute" path names, importing its module (once; Python caches it)."""
    module, _, attribute = path.partition(":")
    return getattr(import_module(module), attribute)


class ByTask(Mapping[str, T]):
    """A read-only task → value view over `TASKS`, computed on each lookup: a per-task table that is derived from
    the descriptors (and sees a task added to `TASKS`) instead of being spelled again."""

    def __init__(self, get: Callable[[TaskInfo], T]) -> None:
        self._get = get

    def __getitem__(self, task: str) -> T:
        return self._get(TASKS[task])

    def __iter__(self) -> Iterator[str]:
        return iter(TASKS)

    def __len__(self) -> int:
        return len(TASKS)

    def __repr__(self) -> str:
        return f"ByTask({dict(self)!r})"
