"""The task registry: one entry per task module, imported on first use."""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec

from training.tasks.base import Task

# task → (module, Task class); serving's predictors are in inference/predictors.
_REGISTRY: dict[str, tuple[str, str]] = {
    "classification": ("training.tasks.classification", "ClassificationTask"),
    "question-answering": ("training.tasks.question_answering", "QuestionAnsweringTask"),
    "summarization": ("training.tasks.summarization", "SummarizationTask"),
    "generation": ("training.tasks.generation", "GenerationTask"),
}
_TASKS: dict[str, Task] = {}


def get_task(name: str) -> Task:
    if name not in implemented():
        raise KeyError(f"task '{name}' is not implemented yet; available: {', '.join(_REGISTRY)}")
    if name not in _TASKS:
        module, cls = _REGISTRY[name]
        _TASKS[name] = getattr(import_module(module), cls)()
    return _TASKS[name]


def implemented() -> list[str]:
    return [name for name, (module, _) in _REGISTRY.items() if find_spec(module) is not None]
