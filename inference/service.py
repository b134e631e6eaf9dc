"""What the predict endpoints call: ref → version → cached predictor → outputs, off the event loop."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio

from core.settings import Settings
from registry import versions
from registry.db import session_scope


def _load_predictor(task: str, path: str) -> Any:
    from pathlib import Path

    import torch

    from training.tasks import get_predictor_class

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return get_predictor_class(task)(Path(path), device=device)


@dataclass(frozen=True)
class Resolved:
    name: str
    version: int
    task: str
    path: str

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class InferenceService:
    def __init__(self, settings: Settings) -> None:
        from inference.cache import ModelCache

        self.settings = settings
        self.cache = ModelCache(capacity=settings.model_cache_size, loader=_load_predictor)
        # One forward at a time per model: two cores gain nothing from interleaving, and it bounds memory.
        self._run_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)

    def resolve(self, ref: str | None, task: str) -> Resolved:
        with session_scope() as s:
            mv = versions.resolve_for_task(s, ref, task)
            return Resolved(mv.name, mv.version, mv.task, mv.path)

    def _call(self, resolved: Resolved, method: str, *args: Any, **kwargs: Any) -> Any:
        predictor = self.cache.get(resolved.ref, task=resolved.task, path=resolved.path)
        with self._guard:
            lock = self._run_locks.setdefault(resolved.ref, threading.Lock())
        with lock:
            return getattr(predictor, method)(*args, **kwargs)

    async def resolve_async(self, ref: str | None, task: str) -> Resolved:
        return await anyio.to_thread.run_sync(self.resolve, ref, task)

    async def stream(self, resolved: Resolved, method: str, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Iterate a predictor's synchronous generator without blocking the event loop."""
        predictor = await anyio.to_thread.run_sync(
            lambda: self.cache.get(resolved.ref, task=resolved.task, path=resolved.path))
        iterator = getattr(predictor, method)(*args, **kwargs)
        done = object()
        while (item := await anyio.to_thread.run_sync(next, iterator, done)) is not done:
            yield item

    async def run(self, ref: str | None, task: str, method: str, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        resolved = await anyio.to_thread.run_sync(self.resolve, ref, task)
        result = await anyio.to_thread.run_sync(lambda: self._call(resolved, method, *args, **kwargs))
        return resolved.ref, result
