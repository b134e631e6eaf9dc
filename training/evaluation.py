"""Evaluate a trained version on a dataset of the user's choice, with the metrics training reports.

The rows go through the same column mapping and checks as training data, the same tokenization (the version's
own `training_params.json`: max_length, doc_stride, prefix, block_size), the same collator, the same
`compute_metrics` and the same Trainer evaluation loop with the same eval batch size, so an evaluation on a
version's own validation rows gives the numbers in its metrics.json, and two evaluations of one version on one
dataset give the same numbers. The keys are metrics.json's: `eval_loss`, then `accuracy`, `f1_macro`, `f1`,
`rougeLsum`, `perplexity`, … without the Trainer's `eval_` prefix.

Knows nothing of the database: the worker passes the data source and a cancel check.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.errors import ValidationFailed
from training.data import Source, check_columns, load_rows, map_columns
from training.params_file import read_training_params
from training.spec import EVAL_METRICS, LOWER_IS_BETTER, PARAMS, task_columns
from training.tasks import get_task


class EvaluationCancelled(Exception):
    """`should_stop` turned true during the evaluation loop."""


def evaluate_version(model_dir: Path, *, task: str, source: Source, columns: dict[str, str],
                     should_stop: Callable[[], bool] = lambda: False, device: str | None = None) -> dict[str, float]:
    """The task's evaluation metrics of the model in `model_dir` on the rows of `source` (`columns` maps the
    task's fields to the data's columns; unmapped fields use the task's default column names)."""
    import torch
    from transformers import TrainerCallback

    from training.modeling import load_tokenizer
    from training.runner import eval_metrics

    task_impl = get_task(task)
    mapping = task_columns(task, columns)
    loaded = load_rows(source)
    check_columns(loaded.columns, mapping, what=source.label)
    rows = list(map_columns(mapping, loaded.rows))
    if not rows:
        raise ValidationFailed(f"{source.label} has no rows to evaluate on")
    task_impl.check_rows(rows, uploaded=True, what=source.label)
    # The version's effective hyperparameters (an imported version without them gets the task's defaults).
    stored = read_training_params(model_dir)
    try:
        params = PARAMS[task].model_validate(stored.get("hyperparameters") or {})
    except ValidationError as exc:
        raise ValidationFailed(f"the version's stored hyperparameters are not a {task} job's "
                               f"({exc.errors()[0]['msg']}); it cannot be evaluated as trained") from exc
    # Scored with the lengths it is served with (an imported version has serving values, not hyperparameters).
    serving = stored.get("serving") or {}
    params = params.model_copy(update={k: serving[k] for k in ("max_length", "doc_stride", "block_size")
                                       if isinstance(serving.get(k), int) and k in type(params).model_fields})

    tokenizer = load_tokenizer(str(model_dir))
    prepared = task_impl.prepare_eval(model_source=str(model_dir), tokenizer=tokenizer, params=params, rows=rows)
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")

    class _Stop(TrainerCallback):
        def on_prediction_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if should_stop():
                raise EvaluationCancelled("evaluation stopped on request")

    with tempfile.TemporaryDirectory(prefix="ftserve-eval-") as scratch:
        args = task_impl.build_args(
            output_dir=scratch, per_device_eval_batch_size=params.eval_batch_size or params.train_batch_size * 2,
            report_to="none", disable_tqdm=True, seed=params.seed, use_cpu=not use_cuda, dataloader_num_workers=0,
            **task_impl.training_args_extra(params))
        trainer = task_impl.make_trainer(model=prepared.model, args=args, eval_dataset=prepared.eval,
                                         processing_class=tokenizer, data_collator=prepared.collator,
                                         compute_metrics=prepared.compute_metrics, callbacks=[_Stop()])
        metrics = eval_metrics(task_impl, trainer.evaluate())
    return {key: metrics[key] for key in EVAL_METRICS[task] if key in metrics}


def improves(*, metric: str, new: float, current: float | None, min_improvement: float) -> bool:
    """Whether the new version's score moves the alias: no current version, or new − current ≥ min_improvement
    (current − new for the metrics where lower is better: eval_loss, perplexity)."""
    if current is None:
        return True
    gain = current - new if metric in LOWER_IS_BETTER else new - current
    return gain >= min_improvement
