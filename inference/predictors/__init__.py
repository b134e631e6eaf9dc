"""Serving predictors: one module per task, each a `Predictor` (inference/predictors/base.py). `inference/` runs
every forward pass of serving; `training/` only trains and evaluates."""

from __future__ import annotations

from importlib import import_module

from inference.predictors.base import Encoded, Predictor

__all__ = ["Encoded", "Predictor", "predictor_class"]

# task → (module, Predictor class); a module is imported on first use (it imports numpy; torch only when it runs).
_REGISTRY: dict[str, tuple[str, str]] = {
    "classification": ("inference.predictors.classification", "ClassificationPredictor"),
    "question-answering": ("inference.predictors.question_answering", "QuestionAnsweringPredictor"),
    "summarization": ("inference.predictors.summarization", "SummarizationPredictor"),
    "generation": ("inference.predictors.generation", "GenerationPredictor"),
}


def predictor_class(task: str) -> type[Predictor]:
    if task not in _REGISTRY:
        raise KeyError(f"no predictor for task '{task}'; tasks served: {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[task]
    found: type[Predictor] = getattr(import_module(module), cls)
    return found
