"""What the predict endpoints call: ref → version → cached predictor → outputs, off the event loop."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from core.cpus import size_torch_threads
from core.settings import Settings
from inference.batcher import Batcher
from inference.cache import LOAD_LOCK, ModelCache
from inference.metrics import GENERATION_TOKENS_CANCELLED, GENERATIONS_CANCELLED
from registry import stamp, versions
from registry.db import session_scope

_RESOLVED_MAX = 4096

log = logging.getLogger("ftserve.inference")


def _load_predictor(task: str, path: str, *, quantize_int8: bool = False, torch_threads: int = 0) -> Any:
    from pathlib import Path

    import torch

    from training.tasks import get_predictor_class

    size_torch_threads(torch_threads)  # before the first forward; cheap once set

    device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = get_predictor_class(task)(Path(path), device=device)
    if device == "cuda":
        # Half precision on the GPU: bf16 where the card supports it (no overflow), fp16 otherwise.
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        predictor.model = predictor.model.to(dtype)
        log.info("serving %s in %s", path, dtype)
    elif quantize_int8:
        predictor.model = torch.ao.quantization.quantize_dynamic(predictor.model, {torch.nn.Linear}, dtype=torch.qint8)
        log.info("int8 dynamic quantization of the Linear layers applied to %s (%s)", path, task)
    return predictor


def estimated_tokens(item: Any) -> int:
    """A cheap token count for batch budgets, without the tokenizer: ~4 characters per token (English BPE and
    WordPiece), plus special tokens. A (question, context) pair counts both."""
    if isinstance(item, str):
        return len(item) // 4 + 2
    if isinstance(item, tuple | list):
        return sum(estimated_tokens(x) for x in item)
    return 1


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
        self.settings = settings
        self.cache = ModelCache(capacity=settings.model_cache_size,
                                loader=partial(_load_predictor, quantize_int8=settings.quantize_int8,
                                               torch_threads=settings.torch_threads),
                                max_bytes=settings.model_cache_mb * 1024 * 1024)
        # One forward thread per loaded model: one forward at a time (interleaving gains nothing on shared cores
        # and costs memory), and always the same thread, so torch keeps one OpenMP team per model instead of
        # waking a fresh one for each batch (10-20% of a small model's throughput when threads rotate).
        self._executors: dict[str, ThreadPoolExecutor] = {}
        # (ref, task) → version, valid while the registry stamp stays the same (see registry/stamp.py).
        self._resolved: dict[tuple[str | None, str], Resolved] = {}
        self._stamp: stamp.Stamp = None
        self._batchers: dict[tuple[str, str, str], Batcher] = {}

    def warm_up(self) -> None:
        """Import the ML stack and load `settings.warm_models`, so first requests do not pay for either."""
        # Under the load lock: a model load importing transformers while this thread is half-way through the
        # same import sees a partly initialized module (ImportError); the first load waits for these instead.
        with LOAD_LOCK:
            import torch  # noqa: F401
            import transformers  # noqa: F401

        for ref in filter(None, (r.strip() for r in self.settings.warm_models.split(","))):
            resolved = self._resolve_any(ref)
            self.cache.get(resolved.ref, task=resolved.task, path=resolved.path)
            log.info("warmed up %s", resolved.ref)

    def _resolve_any(self, ref: str) -> Resolved:
        with session_scope() as s:
            mv = versions.resolve(s, ref)
            return Resolved(mv.name, mv.version, mv.task, mv.path)

    def resolve(self, ref: str | None, task: str) -> Resolved:
        with session_scope() as s:
            mv = versions.resolve_for_task(s, ref, task)
            return Resolved(mv.name, mv.version, mv.task, mv.path)

    def _call(self, resolved: Resolved, method: str, *args: Any, **kwargs: Any) -> Any:
        with self.cache.use(resolved.ref, task=resolved.task, path=resolved.path,
                            timeout=self.settings.request_timeout_seconds) as predictor:
            return getattr(predictor, method)(*args, **kwargs)

    def _forget(self, key: tuple[str, str, str]) -> None:
        """An idle batcher goes (one per seed would pile up); its model's thread goes with the last of them."""
        self._batchers.pop(key, None)
        ref = key[0]
        if not any(k[0] == ref for k in self._batchers):
            executor = self._executors.pop(ref, None)
            if executor is not None:
                executor.shutdown(wait=False)

    async def resolve_async(self, ref: str | None, task: str) -> Resolved:
        """`resolve`, answered from memory while no version or alias changed since (one `stat` per call)."""
        now = stamp.read_stamp(self.settings.data_dir)
        if now != self._stamp:
            self._resolved.clear()
            self._stamp = now
        key = (ref, task)
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        resolved = await anyio.to_thread.run_sync(self.resolve, ref, task)
        if self._stamp == now:  # else the registry changed while this query ran: do not keep its answer
            if len(self._resolved) >= _RESOLVED_MAX:
                self._resolved.clear()
            self._resolved[key] = resolved
        return resolved

    async def stream(self, resolved: Resolved, method: str, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Iterate a predictor's synchronous generator without blocking the event loop.

        When the consumer stops early (the client disconnected), the generator is closed, which stops its
        generation at the next token; the predictor reports how far it got through `on_cancel`.
        """
        predictor = await anyio.to_thread.run_sync(lambda: self.cache.acquire(
            resolved.ref, task=resolved.task, path=resolved.path, timeout=self.settings.request_timeout_seconds))

        def on_cancel(tokens: int) -> None:
            GENERATIONS_CANCELLED.labels(model=resolved.ref).inc()
            GENERATION_TOKENS_CANCELLED.labels(model=resolved.ref).inc(tokens)
            log.info("generation cancelled: the client went away after %d new tokens (max_new_tokens %s, model %s)",
                     tokens, kwargs.get("max_new_tokens"), resolved.ref)

        iterator = None
        done = object()
        try:
            iterator = getattr(predictor, method)(*args, on_cancel=on_cancel, **kwargs)
            while (item := await anyio.to_thread.run_sync(next, iterator, done)) is not done:
                yield item
        finally:
            # Closing joins the generation thread: off the loop, and shielded so a cancelled request still does it.
            with anyio.CancelScope(shield=True):
                if iterator is not None:
                    await anyio.to_thread.run_sync(iterator.close)
                self.cache.release(resolved.ref)

    def _batcher(self, resolved: Resolved, method: str, params: dict[str, Any]) -> Batcher:
        """One batcher per model version, method and parameters: only requests that can share a call do."""
        key = (resolved.ref, method, json.dumps(params, sort_keys=True, default=str))
        batcher = self._batchers.get(key)
        if batcher is None:
            extra_tokens = int(params.get("max_new_tokens") or 0) if method == "generate" else 0
            executor = self._executors.get(resolved.ref)
            if executor is None:
                executor = self._executors[resolved.ref] = ThreadPoolExecutor(
                    1, thread_name_prefix=f"forward-{resolved.ref}")
            batcher = Batcher(
                lambda items: self._call(resolved, method, items, **params), model=resolved.ref, executor=executor,
                max_batch_size=self.settings.max_batch_size, max_wait=self.settings.max_batch_wait_ms / 1000,
                max_queue=self.settings.max_queue_items, on_idle=lambda: self._forget(key),
                cost=lambda item: estimated_tokens(item) + extra_tokens, max_cost=self.settings.max_batch_tokens,
            )
            self._batchers[key] = batcher
        return batcher

    async def run(self, ref: str | None, task: str, method: str, items: list[Any], *,
                  is_disconnected: Callable[[], Awaitable[bool]] | None = None, timeout: float | None = None,
                  **params: Any) -> tuple[str, list[Any]]:
        """Resolve `ref` now (an alias moved later does not affect this request) and run `items` through the
        model's batcher; returns (the version's ref, one result per item)."""
        resolved = await self.resolve_async(ref, task)
        batcher = self._batcher(resolved, method, params)
        results = await batcher.submit(items, timeout=timeout or self.settings.request_timeout_seconds,
                                       is_disconnected=is_disconnected)
        return resolved.ref, results
