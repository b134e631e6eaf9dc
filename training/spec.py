"""The job spec: one pydantic model per task for hyperparameters, one shared request shape.

Torch-free on purpose: the API validates submissions with these models at request time.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from core.errors import ValidationFailed
from core.tasks import TASKS, ByTask, load
from training.auto import AUTO, AUTO_FIELDS, DEFAULT_BATCH

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MAX_STEPS = 10**9  # step counts far past any real run, small enough for every library's integer types
MAX_SEED = 2**32 - 1  # numpy's seed range
# A license id as the Hub spells them (SPDX-like, lowercase: apache-2.0, mit, cc-by-4.0, other).
LICENSE_PATTERN = r"^[A-Za-z0-9.+-]{1,64}$"
# ISO 639 codes with optional subtags (en, pt-BR, zh-Hant), or the Hub's "code" / "multilingual".
LANGUAGE_PATTERN = r"^(?:[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,2}|code|multilingual)$"
MAX_LANGUAGES = 32
Language = Annotated[str, Field(pattern=LANGUAGE_PATTERN, max_length=32)]


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


# A branch to push to (or a revision to import): a git ref name without the forms git refuses or that could
# climb out of refs/heads/.
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


def hub_revision(value: str) -> str:
    """`value` if it is a branch name a push may target (`main`, `v1`, `exp/lr-3e-5`), or a revision (branch, tag
    or commit hash) an import may read."""
    if (not _REVISION.fullmatch(value) or ".." in value or "//" in value or "/." in value
            or value.endswith(("/", ".", ".lock"))):
        raise ValueError(
            f"{value[:130]!r} is not a branch name: use letters, digits, '.', '_', '-' and '/', at most 128 "
            "characters, starting with a letter or digit, with no '..', '//' or '/.', not ending with '/', '.' or "
            "'.lock'")
    return value


def server_push_problem(repo_id: str, *, token_configured: bool, namespaces: frozenset[str],
                        own_token_hint: bool) -> str | None:
    """Why a push with the server's Hub token (FTSERVE_HF_TOKEN) may not go to `repo_id`; None when it may.

    The server's token writes only under the namespaces the operator listed: without that rule any key could
    publish under (or overwrite the repos of) every organization the token belongs to."""
    alternative = ' or pass your own "token" with the push' if own_token_hint else ""
    if not token_configured:
        return ("this server has no Hub token of its own (FTSERVE_HF_TOKEN is not set): ask its operator to "
                f"configure FTSERVE_HF_TOKEN{alternative}")
    namespace = repo_id.partition("/")[0].lower() if "/" in repo_id else None
    if namespace is None or namespace not in {n.lower() for n in namespaces}:
        allowed = ", ".join(sorted(namespaces)) or "none are configured"
        return (f"repo_id '{repo_id}' is not under a namespace the server's Hub token may push to "
                f"(FTSERVE_HF_PUSH_NAMESPACES: {allowed}): use '<namespace>/<name>' with one of them{alternative}")
    return None


class HubTarget(_Strict):
    """Where a version is pushed: a Hub model repo and a branch."""

    repo_id: str = Field(min_length=1, max_length=96)
    private: bool = True
    revision: str = Field(default="main", min_length=1, max_length=128)

    @field_validator("repo_id")
    @classmethod
    def _repo(cls, value: str) -> str:
        return hub_repo_id(value, what="model repo")

    @field_validator("revision")
    @classmethod
    def _branch(cls, value: str) -> str:
        return hub_revision(value)


class JobPush(HubTarget):
    """A job's `push`: publish the new version when the job succeeds, always with the server's token."""

    @model_validator(mode="before")
    @classmethod
    def _no_token(cls, data: Any) -> Any:
        if isinstance(data, dict) and "token" in data:
            # Said without the value: a token must never be echoed back.
            raise ValueError(
                "a job's push takes no token: it always uses the server's Hub token (FTSERVE_HF_TOKEN); to push "
                "with your own token, POST /models/{name}/versions/{v}/push once the job has succeeded")
        return data


Auto = Literal["auto"]
AUTO_HELP = ' "auto" (the default, also when null): chosen by the worker from the task, the data and the method'


class CommonParams(_Strict):
    epochs: Annotated[float, Field(gt=0, le=1000)] | Auto = Field(
        default="auto", description="Passes over the training set." + AUTO_HELP + " (training/auto.py).")
    max_steps: int | None = Field(default=None, gt=0, le=MAX_STEPS, description="Overrides epochs when set.")
    learning_rate: Annotated[float, Field(gt=0, le=1)] | Auto = Field(
        default="auto", description="Peak learning rate." + AUTO_HELP + ".")
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Auto = Field(
        default="auto", description="Training batch per device." + AUTO_HELP + ".")
    eval_batch_size: int | None = Field(default=None, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    warmup_steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] | Auto = Field(
        default="auto", description="Linear warm-up steps." + AUTO_HELP + ".")
    max_length: int = Field(default=256, ge=8, le=32768)
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    eval_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS, description="Evaluate and save every N steps.")
    logging_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    save_total_limit: int = Field(default=2, ge=1, le=100, description="The best and the newest checkpoint.")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    fp16: bool | None = Field(default=None, description=(
        "Train in float16. Default (with bf16 unset): on a CUDA GPU without bf16 support, except for models that "
        "overflow in float16 (the T5 family), which train in float32 there. See training/precision.py."))
    bf16: bool | None = Field(default=None, description="Train in bfloat16. Default: on a CUDA GPU that supports it.")

    @field_validator(*AUTO_FIELDS, mode="before")
    @classmethod
    def _null_is_auto(cls, value: Any) -> Any:
        return AUTO if value is None else value

    def unresolved(self) -> list[str]:
        """The fields still "auto" (the worker resolves them before training)."""
        return [name for name in AUTO_FIELDS if getattr(self, name) == AUTO]

    @property
    def train_batch_size(self) -> int:
        """batch_size once resolved; auto's default while still "auto" (an imported version's params may say so)."""
        return self.batch_size if isinstance(self.batch_size, int) else DEFAULT_BATCH

    @model_validator(mode="after")
    def _one_half_precision(self) -> CommonParams:
        if self.fp16 and self.bf16:
            raise ValueError("fp16 and bf16 cannot both be true: choose one half precision (or neither for float32)")
        return self


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


# task → its hyperparameters model and {field: default column}, as the task's descriptor (core/tasks.py) names them.
PARAMS: ByTask[type[CommonParams]] = ByTask(lambda task: load(task.params))
FIELDS: ByTask[dict[str, str]] = ByTask(lambda task: dict(task.fields))


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
EVAL_METRICS: ByTask[tuple[str, ...]] = ByTask(lambda task: task.eval_metrics)
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


# A module name as peft matches it against the model's module paths (a path's last parts: `query`,
# `attention.self.query`); no regular expressions.
_MODULE_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}(?:\.[A-Za-z0-9_]{1,64}){0,7}$"
ModuleName = Annotated[str, Field(pattern=_MODULE_NAME, max_length=512)]
MAX_TARGET_MODULES = 64


class LoraMethod(_Strict):
    """Train a LoRA adapter (peft) instead of every weight: low-rank updates of `target_modules`, plus the task's
    head (trained and saved whole). `target_modules` null: the base model's architecture's default (peft's
    table), filled in by the worker."""

    type: Literal["lora"]
    r: int = Field(default=8, ge=1, le=256, description="The rank of the update matrices.")
    alpha: int = Field(default=16, ge=1, le=4096, description="The scaling numerator: updates are scaled by alpha/r.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: Annotated[list[ModuleName], Field(min_length=1, max_length=MAX_TARGET_MODULES)] | None = Field(
        default=None, description=("Names of the layers to adapt, matched against the end of each module's path "
                                   "(`query`, `c_attn`). Default: the architecture's (BERT: query, value)."))

    @field_validator("target_modules")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(dict.fromkeys(value))


def _method_kind(value: Any) -> str:
    return "full" if isinstance(value, str) else "lora"


# A string must be "full"; an object is a LoraMethod (so a bad object's errors name its fields, not "Input should be
# 'full'").
Method = Annotated[Annotated[Literal["full"], Tag("full")] | Annotated[LoraMethod, Tag("lora")],
                   Discriminator(_method_kind)]


def method_type(method: Any) -> str:
    """"full" or "lora", for a method as stored (a string or a dict) or validated."""
    if isinstance(method, LoraMethod):
        return "lora"
    if isinstance(method, dict):
        return str(method.get("type") or "full")
    return str(method or "full")


class JobRequest(_Strict):
    # A string checked against the tasks by build_spec (its message lists them); the enum documents them.
    task: str = Field(max_length=64, json_schema_extra={"enum": list(TASKS)})
    base_model: str = Field(min_length=1, max_length=512)
    dataset: DatasetRef
    validation: ValidationRef = Field(default_factory=lambda: ValidationRef(split_ratio=0.1))
    columns: dict[str, Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=dict,
                                                                                     max_length=16)
    hyperparameters: dict[str, Any] = Field(default_factory=dict, max_length=64)
    model_name: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)
    push: JobPush | None = None
    license: str | None = Field(default=None, pattern=LICENSE_PATTERN, description=(
        "The model card's license id (SPDX, as the Hub spells it: apache-2.0, mit, cc-by-4.0, other). Default: "
        "FTSERVE_DEFAULT_LICENSE, else the base model's cached card's license, else 'other'."))
    language: Annotated[list[Language], Field(min_length=1, max_length=MAX_LANGUAGES)] | Language | None = Field(
        default=None, description="ISO 639 code(s) of the training texts, for the model card.")
    promote: PromoteSpec | None = None
    method: Method = Field(default="full", description=(
        '"full" (every weight is trained) or a LoRA adapter: {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05, '
        '"target_modules": null}. An adapter version stores only the adapter and the task head.'))


class JobSpec(_Strict):
    """A validated request with every effective value filled in; stored on the job row."""

    task: str
    base_model: str
    dataset: DatasetRef
    validation: ValidationRef
    columns: dict[str, str]
    hyperparameters: dict[str, Any]
    model_name: str
    push: JobPush | None = None
    license: str | None = None  # as requested; the effective one (with its default) is in training_params.json
    language: list[str] | None = None
    promote: PromoteSpec | None = None
    method: Method = "full"

    def params(self) -> CommonParams:
        return PARAMS[self.task].model_validate(self.hyperparameters)


# pydantic names the member of a union in an error's location: `learning_rate.float`, `epochs.literal['auto']`.
_UNION_TAGS = frozenset({"float", "int", "constrained-float", "constrained-int"})


def _auto_branch(error: dict[str, Any]) -> bool:
    return any(str(p).startswith("literal[") for p in error.get("loc", ()))


def params_error(task: str, exc: ValidationError) -> ValidationFailed:
    allowed = sorted(PARAMS[task].model_fields)
    messages = []
    details = []
    for err in exc.errors():
        if _auto_branch(err):
            continue  # a number that is out of range also "is not 'auto'": the range is what to fix
        loc = tuple(p for p in err.get("loc", ()) if p not in _UNION_TAGS)
        field = ".".join(str(p) for p in loc)
        msg = str(err.get("msg"))
        if len(loc) != len(err.get("loc", ())):
            msg += ' (or "auto")'
        if err.get("type") == "extra_forbidden":
            messages.append(f"unknown hyperparameter '{field}' for task {task}; allowed: {', '.join(allowed)}")
        else:
            messages.append(f"hyperparameters.{field}: {msg}" if field else msg)
        details.append({"loc": ["hyperparameters", *loc], "msg": msg})
    return ValidationFailed("; ".join(messages), details=details)


def build_spec(request: JobRequest, *, default_model_name: str) -> JobSpec:
    """Check the task, column mapping and hyperparameters; fill in defaults."""
    if request.task not in PARAMS:
        raise ValidationFailed(f"unknown task '{request.task}'; allowed: {', '.join(TASKS)}")
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
        push=request.push,
        license=request.license.lower() if request.license else None,
        language=[request.language] if isinstance(request.language, str) else request.language,
        promote=promote,
        method=request.method,
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
