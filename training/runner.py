"""The generic fine-tuning run shared by every task: data → split → tokenize → Trainer → saved dir.

`run()` knows nothing of the database: the worker passes callbacks for progress, events and cancel.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from training.auto import choose as choose_auto
from training.data import Rows, Source, check_columns, load_rows, map_columns
from training.lora import is_adapter_dir
from training.lora import save_extras as save_lora_extras
from training.lora import wrap as wrap_lora
from training.model_card import evaluation_rows
from training.params_file import FILE as PARAMS_FILE
from training.params_file import write_json
from training.precision import choose_precision
from training.provenance import base_model_info, library_versions, resolve_license
from training.spec import JobSpec, LoraMethod
from training.tasks import get_task
from training.tasks.base import Task

ProgressFn = Callable[[dict[str, Any]], None]
EventFn = Callable[[str, str, dict[str, Any]], None]
StopFn = Callable[[], bool]


class Cancelled(Exception):
    """The run stopped at a step boundary because `should_stop` said so."""


@dataclass
class TrainingData:
    train: Source
    validation: Source | None = None
    split_ratio: float = 0.1
    # What the version records about its data (dataset id + sha256 or hub name).
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    out_dir: Path
    metrics: dict[str, float]
    data_stats: dict[str, int]
    training_params: dict[str, Any]


def map_rows(spec: JobSpec, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each row with the mapped columns renamed to the task's field names."""
    return map_columns(spec.columns, rows)


def map_rows_checked(
    spec: JobSpec, present: list[str], rows: Iterable[dict[str, Any]], *, what: str
) -> list[dict[str, Any]]:
    """Rename the mapped columns to the task's field names and check the rows (API and worker alike)."""
    check_columns(present, spec.columns, what=what)
    mapped = list(map_rows(spec, rows))
    get_task(spec.task).check_rows(mapped, uploaded=True, what=what)
    return mapped


def _load(spec: JobSpec, source: Source) -> list[dict[str, Any]]:
    rows: Rows = load_rows(source)
    return map_rows_checked(spec, rows.columns, rows.rows, what=source.label)


def load_split(spec: JobSpec, data: TrainingData) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    task = get_task(spec.task)
    params = spec.params()
    train_rows = _load(spec, data.train)
    if data.validation is not None:
        eval_rows = _load(spec, data.validation)
    else:
        train_rows, eval_rows = task.split(train_rows, ratio=data.split_ratio, seed=params.seed)
    return train_rows, eval_rows, 0


class _Hooks:
    """TrainerCallback pieces: progress, metric events, cancel at step boundaries, final eval."""

    def __init__(self, *, on_progress: ProgressFn, on_event: EventFn, should_stop: StopFn,
                 checkpoint_seconds: float = 0.0) -> None:
        self.checkpoint_seconds = checkpoint_seconds
        self.last_save = time.monotonic()
        self.on_progress = on_progress
        self.on_event = on_event
        self.should_stop = should_stop
        self.cancelled = False
        self.t0 = time.monotonic()
        self.first_step: int | None = None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        hooks = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                hooks.t0 = time.monotonic()
                hooks.first_step = state.global_step
                hooks.on_progress(
                    {"step": state.global_step, "total_steps": state.max_steps, "epoch": state.epoch or 0.0,
                     "eta_seconds": None}
                )

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
                done = state.global_step - (hooks.first_step or 0)
                elapsed = time.monotonic() - hooks.t0
                eta = (state.max_steps - state.global_step) * elapsed / done if done > 0 else None
                hooks.on_progress(
                    {"step": state.global_step, "total_steps": state.max_steps,
                     "epoch": round(float(state.epoch or 0.0), 4),
                     "eta_seconds": None if eta is None else round(eta, 1)}
                )
                if hooks.checkpoint_seconds and time.monotonic() - hooks.last_save >= hooks.checkpoint_seconds:
                    control.should_save = True  # a time-based checkpoint between the step-based ones
                if state.global_step >= state.max_steps:
                    # Evaluate and save at the very end too, so the last steps can win "best".
                    control.should_evaluate = True
                    control.should_save = True
                if hooks.should_stop():
                    hooks.cancelled = True
                    control.should_training_stop = True
                    control.should_save = False
                    control.should_evaluate = False
                return control

            def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                hooks.last_save = time.monotonic()

            def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                       **kw: Any) -> None:
                if not logs:
                    return
                data = {"step": state.global_step, **{k: v for k, v in logs.items()
                                                     if isinstance(v, (int, float))}}
                if "loss" in data and not math.isfinite(float(data["loss"])):
                    hooks.on_event("log", f"non-finite training loss at step {state.global_step}", data)
                hooks.on_event("metrics", "", data)

        return _Callback()


def _best_eval(state: Any) -> dict[str, Any] | None:
    """The evaluation logged at the best checkpoint, which load_best_model_at_end has just loaded:
    evaluating it again would cost a full pass over the validation set for the same numbers."""
    step = state.best_global_step
    for entry in reversed(state.log_history):
        if entry.get("step") == step and any(k.startswith("eval_") for k in entry):
            return dict(entry)
    return None


# TrainingArguments the model card lists as the effective hyperparameters (with the job's own, which set most).
_EFFECTIVE_ARGS = (
    "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "max_steps", "eval_steps", "save_steps", "logging_steps", "warmup_steps", "weight_decay", "lr_scheduler_type",
    "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "seed", "data_seed", "fp16", "bf16",
    "metric_for_best_model", "greater_is_better", "load_best_model_at_end", "save_total_limit",
    "predict_with_generate", "generation_max_length", "generation_num_beams",
)


def _plain(value: Any) -> Any:
    """A JSON value for training_params.json: enums (lr_scheduler_type, optim) by their value."""
    value = getattr(value, "value", value)
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def eval_metrics(task: Task, logged: dict[str, Any]) -> dict[str, float]:
    """The metrics.json keys of a Trainer evaluation: `eval_loss`, the task's metrics without the `eval_` prefix
    (`f1_macro`, `rougeLsum`, …) and the derived ones (`perplexity`); timings and the epoch are left out."""
    metrics: dict[str, float] = {}
    for key, value in logged.items():
        if key.startswith("eval_") and isinstance(value, (int, float)) and not key.endswith(
            ("_runtime", "_per_second", "epoch")
        ):
            metrics[key if key == "eval_loss" else key.removeprefix("eval_")] = float(value)
    metrics.update(task.derived_metrics(metrics))
    return metrics


def _schedule(n_train: int, params: Any) -> tuple[int, int, int]:
    """(total optimizer steps, eval/save every N steps, logging every N steps)."""
    per_epoch = max(1, math.ceil(n_train / (params.batch_size * params.gradient_accumulation_steps)))
    total = params.max_steps or max(1, math.ceil(per_epoch * params.epochs))
    every = params.eval_steps or min(per_epoch, total)
    logging = params.logging_steps or max(1, min(50, total // 20 or 1))
    return total, every, logging


def run(
    spec: JobSpec,
    *,
    data: TrainingData,
    model_source: str,
    base_model_resolved: str,
    out_dir: Path,
    checkpoints_dir: Path,
    on_progress: ProgressFn,
    on_event: EventFn,
    should_stop: StopFn,
    resume_from: Path | None = None,
    device: str | None = None,
    on_data: Callable[[dict[str, int]], None] | None = None,
    on_method: Callable[[dict[str, Any]], None] | None = None,
    on_hyperparameters: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_seconds: float = 0.0,
    default_license: str = "",
) -> RunResult:
    """Fine-tune `model_source` on `data` and write a complete version dir to `out_dir`.

    `on_method` gets a LoRA job's effective method (its default target_modules filled in); `on_hyperparameters` the
    job's hyperparameters once the "auto" ones are chosen (training/auto.py).
    `default_license` is the card license of a job that gives none (before the base model's own); the
    training_params.json written beside the model records everything its model card shows (training/model_card.py).
    """
    import torch
    from transformers import set_seed

    from training.modeling import load_tokenizer

    task = get_task(spec.task)
    params = spec.params()
    set_seed(params.seed)

    train_rows, eval_rows, dropped = load_split(spec, data)
    data_stats = {"train_rows": len(train_rows), "validation_rows": len(eval_rows), "dropped_rows": dropped}
    on_event("log", f"data: {len(train_rows)} training rows, {len(eval_rows)} validation rows", data_stats)
    if on_data is not None:
        on_data(data_stats)

    lora = spec.method if isinstance(spec.method, LoraMethod) else None
    if Path(model_source).is_absolute() and is_adapter_dir(model_source):
        # Refused at submit; a version is immutable, so this only guards against a bypassed API.
        raise UserError("the base model is a LoRA adapter version: train from its base model instead")
    tokenizer = load_tokenizer(model_source)
    prepared = task.prepare(
        model_source=model_source,
        tokenizer=tokenizer,
        params=params,
        train_rows=train_rows,
        eval_rows=eval_rows,
        on_event=on_event,
    )
    auto_chosen: dict[str, Any] | None = None  # what "auto" became here (a later attempt finds the values set)
    if params.unresolved():
        # "auto" values are chosen now that the examples are counted; the job keeps them for later attempts.
        choice = choose_auto(params.model_dump(), n_examples=len(prepared.train),
                             n_parameters=prepared.model.num_parameters(), lora=lora is not None,
                             gradient_accumulation_steps=params.gradient_accumulation_steps, max_steps=params.max_steps)
        params = type(params).model_validate({**params.model_dump(), **choice.values})
        spec = spec.model_copy(update={"hyperparameters": params.model_dump(mode="json")})
        if on_hyperparameters is not None:  # first: an attempt killed after it never chooses (or says so) twice
            on_hyperparameters(spec.hyperparameters)
        on_event("log", choice.message(), {"auto": choice.values, "reasons": choice.reasons})
        auto_chosen = {"values": choice.values, "reasons": choice.reasons}
    total, every, logging_steps = _schedule(len(prepared.train), params)
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    model_type = getattr(prepared.model.config, "model_type", None)
    precision = choose_precision(cuda=use_cuda, bf16_supported=use_cuda and torch.cuda.is_bf16_supported(),
                                 model_type=model_type, fp16=params.fp16, bf16=params.bf16)
    on_event("log", f"precision: {precision.reason}", precision.event())
    adapter: dict[str, Any] | None = None
    model = prepared.model
    # The generation settings the task gave the model (an adapter folder saves them: the base's may lack some).
    generation_config = copy.deepcopy(model.generation_config) if lora and model.can_generate() else None
    if lora is not None:
        model, adapter = wrap_lora(prepared.model, method=lora, task=spec.task, model_name=spec.base_model,
                                   on_event=on_event)
        if on_method is not None:
            on_method({k: adapter[k] for k in ("type", "r", "alpha", "dropout", "target_modules")})

    args = task.build_args(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.eval_batch_size or params.batch_size * 2,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        learning_rate=params.learning_rate,
        weight_decay=params.weight_decay,
        warmup_steps=params.warmup_steps,
        lr_scheduler_type=params.lr_scheduler_type,
        max_steps=total,
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=params.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=task.main_metric,
        greater_is_better=task.greater_is_better,
        logging_strategy="steps",
        logging_steps=logging_steps,
        report_to="none",
        disable_tqdm=True,
        seed=params.seed,
        data_seed=params.seed,
        fp16=precision.fp16,
        bf16=precision.bf16,
        use_cpu=not use_cuda,
        dataloader_num_workers=0,
        save_only_model=False,
        **task.training_args_extra(params),
    )
    hooks = _Hooks(on_progress=on_progress, on_event=on_event, should_stop=should_stop,
                   checkpoint_seconds=checkpoint_seconds)
    trainer = task.make_trainer(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        data_collator=prepared.collator,
        compute_metrics=prepared.compute_metrics,
        callbacks=[hooks.callback()],
    )
    train_out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if hooks.cancelled:
        raise Cancelled("training stopped on request")
    train_loss = float(train_out.training_loss)
    if not math.isfinite(train_loss):
        raise UserError(
            "training diverged (the loss is not finite); lower the learning_rate or check the data"
        )
    metrics = eval_metrics(task, _best_eval(trainer.state) or trainer.evaluate())
    metrics["train_loss"] = train_loss
    metrics["train_runtime_s"] = float(train_out.metrics.get("train_runtime", 0.0))

    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.config.use_cache = True
    trainer.save_model(str(out_dir))  # safetensors by default in transformers 5
    tokenizer.save_pretrained(str(out_dir))
    # The Trainer pickles its arguments next to the weights; a served artifact ships no pickles.
    (out_dir / "training_args.bin").unlink(missing_ok=True)
    base = base_model_info(base_model_resolved, model_source)
    if adapter is not None:
        # peft writes a card of its own; the version's card (training/model_card.py) replaces it at registration.
        (out_dir / "README.md").unlink(missing_ok=True)
        kind, _, rest = base_model_resolved.partition(":")
        adapter = {**adapter, "base": {"resolved": base_model_resolved, "hub": rest if kind == "hub" else None,
                                       "revision": base["revision"] if kind == "hub" else None,
                                       "version": rest if kind == "model" else None},
                   "model_config": save_lora_extras(prepared.model, out_dir=out_dir, base_source=model_source,
                                                    generation_config=generation_config)}
    license_ = resolve_license(spec.license, default=default_license, base_license=base.pop("license"))
    training_params = {
        **json.loads(spec.model_dump_json()),
        "base_model_resolved": base_model_resolved,
        "base": base,
        "license": license_["id"],
        "license_source": license_["source"],
        "serving": prepared.serving_params,
        "auto_hyperparameters": auto_chosen,
        "method": "full" if adapter is None else "lora",
        "adapter": adapter,
        "precision": precision.event(),
        "data": {**data.provenance, **data_stats, **task.data_facts(train_rows, eval_rows)},
        "preprocessing": task.preprocessing(serving=prepared.serving_params, tokenizer=tokenizer),
        "schedule": {"total_steps": total, "eval_steps": every, "logging_steps": logging_steps},
        "effective_hyperparameters": {
            **{name: _plain(getattr(args, name)) for name in _EFFECTIVE_ARGS if hasattr(args, name)},
            "epochs_trained": float(trainer.state.epoch or 0.0),
            "total_train_batch_size": params.batch_size * params.gradient_accumulation_steps,
        },
        "training_results": evaluation_rows(trainer.state.log_history, derive=task.derived_metrics),
        # load_best_model_at_end: the saved weights are those of this evaluation's checkpoint.
        "best_step": trainer.state.best_global_step,
        "libraries": library_versions(),
        "device": device or ("cuda" if use_cuda else "cpu"),
        "training_seconds": metrics["train_runtime_s"],
    }
    write_json(out_dir / PARAMS_FILE, training_params)
    write_json(out_dir / "metrics.json", metrics)
    return RunResult(out_dir=out_dir, metrics=metrics, data_stats=data_stats, training_params=training_params)
