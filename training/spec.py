"""The job spec: one pydantic model per task for hyperparameters, one shared request shape.

Torch-free on purpose: the API validates submissions with these models at request time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ValidationFailed

TASK_NAMES = ("classification", "question-answering", "summarization", "generation")
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MAX_STEPS = 10**9  # step counts far past any real run, small enough for every library's integer types
MAX_SEED = 2**32 - 1  # numpy's seed range


def hub_repo_id(value: str, *, what: str) -> str:
    """`value` if it is a Hugging Face hub repo id (`name` or `org/name`, the Hub's character set, no `..`, no
    leading `/` or `.`): such a name can only reach the hub or its cache, never a path on the server."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as exc:
        raise ValueError(
            f"{value[:100]!r} is not a Hugging Face hub {what} id: use 'name' or 'org/name' with letters, digits, "
            "'-', '_' or '.', at most 96 characters, not starting or ending with '-' or '.', and no '..' or '--'"
        ) from exc
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CommonParams(_Strict):
    epochs: float = Field(default=3.0, gt=0, le=1000)
    max_steps: int | None = Field(default=None, gt=0, le=MAX_STEPS, description="Overrides epochs when set.")
    learning_rate: float = Field(default=5e-5, gt=0, le=1)
    batch_size: int = Field(default=16, ge=1, le=4096)
    eval_batch_size: int | None = Field(default=None, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS)
    max_length: int = Field(default=256, ge=8, le=32768)
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    eval_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS, description="Evaluate and save every N steps.")
    logging_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    save_total_limit: int = Field(default=2, ge=1, le=100, description="The best and the newest checkpoint.")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    fp16: bool | None = Field(default=None, description="Default: on when a CUDA GPU is used.")


class ClassificationParams(CommonParams):
    pass


class QuestionAnsweringParams(CommonParams):
    max_length: int = Field(default=384, ge=16, le=32768)
    doc_stride: int = Field(default=128, ge=1, le=32768)
    max_answer_length: int = Field(default=30, ge=1, le=1024)

    @model_validator(mode="after")
    def _stride_fits(self) -> QuestionAnsweringParams:
        if self.doc_stride >= self.max_length:
            raise ValueError("doc_stride must be smaller than max_length")
        return self


class SummarizationParams(CommonParams):
    max_length: int = Field(default=512, ge=8, le=32768)
    max_target_length: int = Field(default=64, ge=1, le=4096)
    prefix: str | None = Field(default=None, max_length=256,
                               description='Default: "summarize: " for T5 models, else "".')
    eval_num_beams: int = Field(default=1, ge=1, le=16)


class GenerationParams(CommonParams):
    block_size: int = Field(default=128, ge=8, le=32768)


PARAMS: dict[str, type[CommonParams]] = {
    "classification": ClassificationParams,
    "question-answering": QuestionAnsweringParams,
    "summarization": SummarizationParams,
    "generation": GenerationParams,
}

# task → {field: default column}
FIELDS: dict[str, dict[str, str]] = {
    "classification": {"text": "text", "label": "label"},
    "question-answering": {"question": "question", "context": "context", "answers": "answers"},
    "summarization": {"document": "document", "summary": "summary"},
    "generation": {"text": "text"},
}


def _dataset_id(value: str | None) -> str | None:
    return None if value is None else hub_repo_id(value, what="dataset")


class DatasetRef(_Strict):
    id: str | None = Field(default=None, max_length=64)
    hub: str | None = Field(default=None, max_length=256)
    config: str | None = Field(default=None, max_length=256)
    split: str = Field(default="train", max_length=128)

    _hub_id = field_validator("hub")(staticmethod(_dataset_id))

    @model_validator(mode="after")
    def _one_source(self) -> DatasetRef:
        if (self.id is None) == (self.hub is None):
            raise ValueError('give exactly one of "id" (an uploaded dataset) or "hub" (a hub dataset name)')
        return self


class ValidationRef(_Strict):
    id: str | None = Field(default=None, max_length=64)
    hub: str | None = Field(default=None, max_length=256)
    config: str | None = Field(default=None, max_length=256)
    split: str | None = Field(default=None, max_length=128)
    split_ratio: float | None = Field(default=None, gt=0, lt=1)

    _hub_id = field_validator("hub")(staticmethod(_dataset_id))

    @model_validator(mode="after")
    def _one_source(self) -> ValidationRef:
        given = [x for x in (self.id, self.hub, self.split_ratio) if x is not None]
        if len(given) != 1:
            raise ValueError('give exactly one of "id", "hub" or "split_ratio"')
        return self


class EvalDatasetRef(DatasetRef):
    """The data an evaluation reads: an uploaded dataset, or a hub dataset's split (default: `validation`)."""

    split: str = Field(default="validation", max_length=128)


# The metrics an evaluation gives, per task (the keys of a version's metrics.json, less the training-only ones).
EVAL_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro", "eval_loss"),
    "question-answering": ("exact_match", "f1", "eval_loss"),
    "summarization": ("rouge1", "rouge2", "rougeL", "rougeLsum", "eval_loss"),
    "generation": ("eval_loss", "perplexity"),
}
LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity"})


def metric_key(task: str, metric: str) -> str:
    """The metrics.json key `metric` names for `task`: `f1_macro` or `eval_f1_macro` (the Trainer's spelling) are
    one metric; anything else is a 422 listing the task's keys."""
    keys = EVAL_METRICS[task]
    key = metric if metric in keys else metric.removeprefix("eval_")
    if key not in keys:
        raise ValidationFailed(f"promote.metric {metric[:64]!r} is not a {task} metric; use one of: "
                               f"{', '.join(keys)}")
    return key


class PromoteSpec(_Strict):
    """Evaluate the new version and the alias's current one on `dataset` when training ends; move the alias when
    the new one is better by at least `min_improvement` (lower is better for eval_loss and perplexity)."""

    alias: str = Field(default="production", pattern=MODEL_NAME_PATTERN)
    metric: str = Field(min_length=1, max_length=64)
    min_improvement: float = Field(default=0.0, ge=-1e6, le=1e6, allow_inf_nan=False)
    dataset: EvalDatasetRef


class JobRequest(_Strict):
    task: str = Field(max_length=64)
    base_model: str = Field(min_length=1, max_length=512)
    dataset: DatasetRef
    validation: ValidationRef = Field(default_factory=lambda: ValidationRef(split_ratio=0.1))
    columns: dict[str, Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=dict,
                                                                                     max_length=16)
    hyperparameters: dict[str, Any] = Field(default_factory=dict, max_length=64)
    model_name: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)
    promote: PromoteSpec | None = None


class JobSpec(_Strict):
    """A validated request with every effective value filled in; stored on the job row."""

    task: str
    base_model: str
    dataset: DatasetRef
    validation: ValidationRef
    columns: dict[str, str]
    hyperparameters: dict[str, Any]
    model_name: str
    promote: PromoteSpec | None = None

    def params(self) -> CommonParams:
        return PARAMS[self.task].model_validate(self.hyperparameters)


def _loc(error: dict[str, Any]) -> str:
    return ".".join(str(p) for p in error.get("loc", ()))


def params_error(task: str, exc: ValidationError) -> ValidationFailed:
    allowed = sorted(PARAMS[task].model_fields)
    messages = []
    for err in exc.errors():
        field = _loc(err)
        if err.get("type") == "extra_forbidden":
            messages.append(f"unknown hyperparameter '{field}' for task {task}; allowed: {', '.join(allowed)}")
        else:
            messages.append(f"hyperparameters.{field}: {err.get('msg')}" if field else str(err.get("msg")))
    return ValidationFailed("; ".join(messages), details=[{"loc": ["hyperparameters", *e["loc"]],
                                                           "msg": e["msg"]} for e in exc.errors()])


def build_spec(request: JobRequest, *, default_model_name: str) -> JobSpec:
    """Check the task, column mapping and hyperparameters; fill in defaults."""
    if request.task not in PARAMS:
        raise ValidationFailed(f"unknown task '{request.task}'; allowed: {', '.join(TASK_NAMES)}")
    columns = task_columns(request.task, request.columns)
    promote = request.promote
    if promote is not None:
        promote = promote.model_copy(update={"metric": metric_key(request.task, promote.metric)})
    try:
        params = PARAMS[request.task].model_validate(request.hyperparameters)
    except ValidationError as exc:
        raise params_error(request.task, exc) from exc
    return JobSpec(
        task=request.task,
        base_model=request.base_model.strip(),
        dataset=request.dataset,
        validation=request.validation,
        columns=columns,
        hyperparameters=params.model_dump(mode="json"),
        model_name=request.model_name or default_model_name,
        promote=promote,
    )


def task_columns(task: str, columns: dict[str, str]) -> dict[str, str]:
    """The task's field → column mapping with defaults filled in; a field the task does not have is a 422."""
    fields = FIELDS[task]
    unknown = sorted(set(columns) - set(fields))
    if unknown:
        raise ValidationFailed(
            f"unknown column field(s) {', '.join(repr(u) for u in unknown)} for task {task}; "
            f"allowed: {', '.join(fields)}"
        )
    return {**fields, **columns}
