"""Serving predictors: one module per task, each a `Predictor` (inference/predictors/base.py), named by its task's
descriptor (core/tasks.py). `inference/` runs every forward pass of serving; `training/` only trains and evaluates."""

from __future__ import annotations

from core.tasks import TASKS, load
from inference.predictors.base import Encoded, Predictor

__all__ = ["Encoded", "Predictor", "predictor_class"]


def predictor_class(task: str) -> type[Predictor]:
    """The task's predictor class; its module is imported on first use (it imports numpy; torch only when it runs)."""
    if task not in TASKS:
        raise KeyError(f"no predictor for task '{task}'; tasks served: {', '.join(TASKS)}")
    found: type[Predictor] = load(TASKS[task].predictor)
    return found
