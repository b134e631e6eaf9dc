"""The training side of the task registry (core/tasks.py): each task's `Task`, imported on first use."""

from __future__ import annotations

from importlib.util import find_spec

from core.tasks import TASKS, load
from training.tasks.base import Task

_TASKS: dict[str, Task] = {}


def get_task(name: str) -> Task:
    if name not in implemented():
        raise KeyError(f"task '{name}' is not implemented yet; available: {', '.join(TASKS)}")
    if name not in _TASKS:
        _TASKS[name] = load(TASKS[name].trainer)()
    return _TASKS[name]


def implemented() -> list[str]:
    return [name for name, info in TASKS.items() if find_spec(info.trainer_module) is not None]
