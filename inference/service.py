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
from inference.continuous import ContinuousGeneration, close_decode_loop
from inference.metrics import GENERATION_TOKENS_CANCELLED, GENERATIONS_CANCELLED
from inference.streaming import StreamGate, Ticket, TokenSink, run_stream
from registry import stamp, versions
from registry.access import EVERYONE, Viewer
from registry.db import session_scope

_RESOLVED_MAX = 4096

log = logging.getLogger("ftserve.inference")


def _load_predictor(task: str, path: str, *, quantize_int8: bool = False, onednn_linear: bool = False,
                    torch_threads: int = 0) -> Any:
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
    elif onednn_linear and task == "generation":
        from inference.onednn import pack_linear_layers

        log.info("%d linear layers of %s on oneDNN with packed weights", pack_linear_layers(predictor.model), path)
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



def generation_cost(item: tuple[str, int]) -> int:
    """A prompt and its max_new_tokens: the positions its row of a `generate` batch may fill."""
    return estimated_tokens(item[0]) + item[1]

# The forward passes of /classify and /answer: one short pass per batch, so they never wait for a batch to fill.
ZERO_WAIT_METHODS = frozenset({"predict", "answer"})

class InferenceService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = ModelCache(capacity=settings.model_cache_size,
                                loader=partial(_load_predictor, quantize_int8=settings.quantize_int8,
                                               onednn_linear=settings.onednn_linear,
                                               torch_threads=settings.torch_threads),
                                max_bytes=settings.model_cache_mb * 1024 * 1024, on_unload=close_decode_loop)
        # One forward thread per loaded model: one forward at a time (interleaving gains nothing on shared cores
        # and costs memory), and always the same thread, so torch keeps one OpenMP team per model instead of
        # waking a fresh one for each batch (10-20% of a small model's throughput when threads rotate).
        self._executors: dict[str, ThreadPoolExecutor] = {}
        # (viewer, ref, task) → version, valid while the registry stamp stays the same (see registry/stamp.py):
        # per viewer, because a bare name or no name at all resolves among the caller's models.
        self._resolved: dict[tuple[Viewer, str | None, str], Resolved] = {}
        self._stamp: stamp.Stamp = None
        self._batchers: dict[tuple[str, str, str], Batcher] = {}
        self._streams: dict[str, StreamGate] = {}
        self.continuous = ContinuousGeneration(self.cache, settings)

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

    def resolve(self, ref: str | None, task: str, viewer: Viewer = EVERYONE) -> Resolved:
        with session_scope() as s:
            mv = versions.resolve_for_task(s, ref, task, viewer)
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

    async def resolve_async(self, ref: str | None, task: str, viewer: Viewer = EVERYONE) -> Resolved:
        """`resolve`, answered from memory while no version, alias or visibility changed since (one `stat` per
        call)."""
        now = stamp.read_stamp(self.settings.data_dir)
        if now != self._stamp:
            self._resolved.clear()
            self._stamp = now
        key = (viewer, ref, task)
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        resolved = await anyio.to_thread.run_sync(self.resolve, ref, task, viewer)
        if self._stamp == now:  # else the registry changed while this query ran: do not keep its answer
            if len(self._resolved) >= _RESOLVED_MAX:
                self._resolved.clear()
            self._resolved[key] = resolved
        return resolved

    async def open_stream(self, resolved: Resolved, prompt: str, *,
                          is_disconnected: Callable[[], Awaitable[bool]] | None = None, timeout: float | None = None,
                          **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Admit one streamed generation to `resolved`'s queue, or raise (before anything is sent): RateLimited
        when the queue is full, ValidationFailed for a prompt past the model's context. Returns the stream of
        {"text"} chunks and the final {"done"}; see inference/streaming.py. `timeout` (X-Request-Timeout, at most
        the setting) bounds the wait to start."""
        timeout = timeout or self.settings.request_timeout_seconds
        if self.settings.continuous_batching:
            return await self.continuous.open_stream(resolved.ref, resolved.task, resolved.path, prompt,
                                                     timeout=timeout, **params)
        await anyio.to_thread.run_sync(lambda: self._call(resolved, "check_prompts", [prompt],
                                                          max_new_tokens=params.get("max_new_tokens", 64)))
        gate = self._streams.get(resolved.ref)
        if gate is None:
            gate = self._streams[resolved.ref] = StreamGate(
                model=resolved.ref, running=self.settings.max_streams_per_model,
                on_idle=lambda: self._streams.pop(resolved.ref, None))
        queued = sum(b.depth for k, b in self._batchers.items() if k[0] == resolved.ref)
        ticket = gate.admit(queued_elsewhere=queued, max_queue=self.settings.max_queue_items)

        def on_cancel(tokens: int) -> None:
            GENERATIONS_CANCELLED.labels(model=resolved.ref).inc()
            GENERATION_TOKENS_CANCELLED.labels(model=resolved.ref).inc(tokens)
            log.info("generation cancelled: the client went away after %d new tokens (max_new_tokens %s, model %s)",
                     tokens, params.get("max_new_tokens"), resolved.ref)

        def generate(sink: TokenSink) -> None:
            with self.cache.use(resolved.ref, task=resolved.task, path=resolved.path, timeout=timeout) as predictor:
                predictor.stream_into(prompt, sink, on_cancel=on_cancel, **params)

        return Ticketed(run_stream(ticket, generate, stops=params.get("stop"), timeout=timeout,
                                   is_disconnected=is_disconnected), ticket)

    def _batcher(self, resolved: Resolved, method: str, params: dict[str, Any]) -> Batcher:
        """One batcher per model version, method and parameters: only requests that can share a call do."""
        key = (resolved.ref, method, json.dumps(params, sort_keys=True, default=str))
        batcher = self._batchers.get(key)
        if batcher is None:
            executor = self._executors.get(resolved.ref)
            if executor is None:
                executor = self._executors[resolved.ref] = ThreadPoolExecutor(
                    1, thread_name_prefix=f"forward-{resolved.ref}")
            # Encoders batch with no wait (as TEI does): an idle model runs a request at once, and under load a
            # batch is what queued while the previous forward ran. Generation waits a little (FTSERVE_MAX_BATCH_
            # WAIT_MS, stretched with its run time) so that concurrent calls can share one `generate`.
            zero_wait = method in ZERO_WAIT_METHODS
            batcher = Batcher(
                lambda items: self._call(resolved, method, items, **params), model=resolved.ref, executor=executor,
                max_batch_size=self.settings.max_batch_size,
                max_wait=0.0 if zero_wait else self.settings.max_batch_wait_ms / 1000,
                wait_fraction=0.0 if zero_wait else 0.02,
                max_queue=self.settings.max_queue_items, on_idle=lambda: self._forget(key),
                cost=generation_cost if method == "generate" else estimated_tokens,
                max_cost=self.settings.max_batch_tokens,
                also_queued=lambda: gate.waiting if (gate := self._streams.get(resolved.ref)) is not None else 0,
            )
            self._batchers[key] = batcher
        return batcher

    async def run(self, resolved: Resolved, method: str, items: list[Any], *,
                  is_disconnected: Callable[[], Awaitable[bool]] | None = None, timeout: float | None = None,
                  **params: Any) -> list[Any]:
        """Run `items` through the batcher of `resolved` (resolved once, before: an alias moved later does not
        affect this request); one result per item."""
        if method == "generate" and self.settings.continuous_batching:
            return await self.continuous.generate(
                resolved.ref, resolved.task, resolved.path, items, is_disconnected=is_disconnected,
                timeout=timeout or self.settings.request_timeout_seconds, **params)
        if method == "generate":
            # Each prompt carries its own max_new_tokens: requests that differ only there share a batch.
            params = dict(params)
            budget = int(params.pop("max_new_tokens", 64))
            items = [(item, budget) for item in items]
        batcher = self._batcher(resolved, method, params)
        return await batcher.submit(items, timeout=timeout or self.settings.request_timeout_seconds,
                                    is_disconnected=is_disconnected)


class Ticketed:
    """A stream and its admission ticket: closing the one gives back the other even if it never started."""

    def __init__(self, stream: AsyncIterator[dict[str, Any]], ticket: Ticket) -> None:
        self._stream, self._ticket = stream, ticket

    def __aiter__(self) -> Ticketed:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._stream.__anext__()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()  # type: ignore[attr-defined]
        finally:
            self._ticket.close()
