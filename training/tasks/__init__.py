"""The task registry: one entry per task module, imported on first use."""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from typing import Any

from training.tasks.base import Task

# task → (module, Task class, Predictor class)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "classification": ("training.tasks.classification", "ClassificationTask", "ClassificationPredictor"),
    "question-answering": ("training.tasks.question_answering", "QuestionAnsweringTask", "QuestionAnsweringPredictor"),
    "summarization": ("training.tasks.summarization", "SummarizationTask", "SummarizationPredictor"),
    "generation": ("training.tasks.generation", "GenerationTask", "GenerationPredictor"),
}
_TASKS: dict[str, Task] = {}


def get_task(name: str) -> Task:
    if name not in implemented():
        raise KeyError(f"task '{name}' is not implemented yet; available: {', '.join(_REGISTRY)}")
    if name not in _TASKS:
        module, cls, _ = _REGISTRY[name]
        _TASKS[name] = getattr(import_module(module), cls)()
    return _TASKS[name]


def get_predictor_class(name: str) -> Any:
    module, _, cls = _REGISTRY[name]
    return getattr(import_module(module), cls)


def implemented() -> list[str]:
    return [name for name, (module, _, _) in _REGISTRY.items() if find_spec(module) is not None]
