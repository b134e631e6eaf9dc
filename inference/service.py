"""What the predict endpoints call: ref → version → cached predictor → outputs, off the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from core.cpus import size_torch_threads
from core.settings import Settings
from core.tasks import TASKS
from inference.adapters import ServingCache, predict_on_base
from inference.batcher import Batcher
from inference.cache import LOAD_LOCK
from inference.continuous import ContinuousGeneration, close_decode_loop
from inference.metrics import GENERATION_TOKENS_CANCELLED, GENERATIONS_CANCELLED
from inference.predictors import Encoded, Predictor
from inference.streaming import StreamGate, Ticket, TokenSink, run_stream
from registry import stamp, versions
from registry.access import EVERYONE, Viewer
from registry.db import session_scope

_RESOLVED_MAX = 4096

log = logging.getLogger("ftserve.inference")


def _load_predictor(task: str, path: str, *, quantize_int8: bool = False, onednn_linear: bool = False,
                    torch_threads: int = 0, onnx: str = "off", data_dir: Path | None = None) -> Predictor:
    import torch

    from inference.onnx_runtime import use_onnx
    from inference.predictors import predictor_class

    threads = size_torch_threads(torch_threads)  # before the first forward; cheap once set

    device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = predictor_class(task)(Path(path), device=device)
    predictor.warm_up()  # before request threads tokenize with it at once
    if device == "cuda":
        # Half precision on the GPU: bf16 where the card supports it (no overflow), fp16 otherwise. FTSERVE_ONNX
        # does not apply: it is a CPU path (onnxruntime's CPU build).
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        predictor.model = predictor.model.to(dtype)
        log.info("serving %s in %s", path, dtype)
    elif onnx != "off" and data_dir is not None and use_onnx(predictor, task=task, path=path, mode=onnx,
                                                             data_dir=data_dir, threads=threads):
        pass  # the encoder runs in ONNX Runtime (inference/onnx_runtime.py); FTSERVE_QUANTIZE_INT8 does not apply
    elif quantize_int8:
        predictor.model = torch.ao.quantization.quantize_dynamic(predictor.model, {torch.nn.Linear}, dtype=torch.qint8)
        log.info("int8 dynamic quantization of the Linear layers applied to %s (%s)", path, task)
    elif onednn_linear and TASKS[task].architecture == "decoder":
        from inference.onednn import pack_linear_layers

        log.info("%d linear layers of %s on oneDNN with packed weights", pack_linear_layers(predictor.model), path)
    return predictor


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
        # Full versions and LoRA adapter versions (on shared bases), each in an LRU cache of its own.
        self.cache = ServingCache(settings, load_full=partial(_load_predictor, quantize_int8=settings.quantize_int8,
                                                              onednn_linear=settings.onednn_linear,
                                                              torch_threads=settings.torch_threads,
                                                              onnx=settings.onnx, data_dir=settings.data_dir),
                                  # an evicted or deleted generation model's decode loop ends with it
                                  on_unload=close_decode_loop)
        # Two threads per loaded model (per shared base for adapters), by (role, ref). "forward": one forward at a
        # time (interleaving gains nothing on shared cores and costs memory), and always the same thread, so torch
        # keeps one OpenMP team per model instead of waking a fresh one for each batch (10-20% of a small model's
        # throughput when threads rotate); a model whose runs are single-threaded (ONNX Runtime) has a forward
        # thread per lane (`Predictor.lanes`), and its batchers share that many lanes (`_lanes`). "encode": the
        # requests' tokenization, one request at a time. With a
        # thread per request (anyio's pool), dozens of tokenizing threads take the GIL from the forward thread
        # between its ops under load: 64 concurrent in-process /classify requests ran at 0.4-0.9x of tokenizing in
        # the forward thread, and at 0.8-1.3x with this one thread (a noisy 2-core machine, three alternating runs
        # each).
        self._executors: dict[tuple[str, str], ThreadPoolExecutor] = {}
        self._lanes: dict[str, asyncio.Semaphore] = {}  # ref → the forward lanes its batchers share
        self._groups: dict[str, str] = {}  # an adapter version's ref → the batches of its base it joins
        # (viewer, ref, task) → version, valid while the registry stamp stays the same (see registry/stamp.py):
        # per viewer, because a bare name or no name at all resolves among the caller's models.
        self._resolved: dict[tuple[Viewer, str | None, str], Resolved] = {}
        self._stamp: stamp.Stamp = None
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._streams: dict[str, StreamGate] = {}
        self.continuous = ContinuousGeneration(self.cache, settings)

    def warm_up(self) -> None:
        """Import the ML stack and load `settings.warm_models`, so first requests do not pay for either."""
        # Under the load lock: a model load importing transformers while this thread is half-way through the
        # same import sees a partly initialized module (ImportError); the first load waits for these instead.
        with LOAD_LOCK:
            import peft  # noqa: F401  (LoRA adapter versions: ~2 s of a CPU that their first load would pay)
            import torch  # noqa: F401
            import transformers  # noqa: F401
        log.info("serving libraries imported (torch, transformers, peft)")

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

    def _call(self, resolved: Resolved, fn: Callable[[Predictor], Any]) -> Any:
        with self.cache.use(resolved.ref, task=resolved.task, path=resolved.path,
                            timeout=self.settings.request_timeout_seconds) as predictor:
            return fn(predictor)

    def _thread(self, role: str, ref: str, workers: int = 1) -> ThreadPoolExecutor:
        """The `role` threads of model `ref` (`workers` of them, made with the first call)."""
        executor = self._executors.get((role, ref))
        if executor is None:
            executor = self._executors[role, ref] = ThreadPoolExecutor(workers, thread_name_prefix=f"{role}-{ref}")
        return executor

    def _forget(self, key: tuple[str, str]) -> None:
        """An idle batcher goes (one per seed would pile up); its model's threads go with the last of them."""
        self._batchers.pop(key, None)
        ref = key[0]
        if not any(k[0] == ref for k in self._batchers):
            # An adapter's first request encodes on a thread named after the adapter (its base is known only once
            # it is loaded): those threads go with their base's last batcher too.
            owners = [ref, *(r for r, group in self._groups.items() if group == ref)]
            keys = [("forward", ref), *(("encode", owner) for owner in owners)]
            self._lanes.pop(ref, None)
            for key in keys:
                executor = self._executors.pop(key, None)
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
        await anyio.to_thread.run_sync(lambda: self._call(resolved, lambda p: p.check_prompts(
            [prompt], max_new_tokens=params.get("max_new_tokens", 64))))
        gate = self._streams.get(resolved.ref)
        if gate is None:
            gate = self._streams[resolved.ref] = StreamGate(
                model=resolved.ref, running=self.settings.max_streams_per_model,
                on_idle=lambda: self._streams.pop(resolved.ref, None))
        ticket = gate.admit(queued_elsewhere=self.queued(resolved.ref), max_queue=self.settings.max_queue_items)

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

    def queued(self, ref: str) -> int:
        """Inputs waiting in the batchers of model version `ref` (of its base, for an adapter version)."""
        group = self._groups.get(ref, ref)
        return sum(b.depth for k, b in self._batchers.items() if k[0] == group)

    def _encode(self, resolved: Resolved, items: list[Any], params: dict[str, Any], timeout: float
                ) -> tuple[type[Predictor], list[Encoded], str | None, int]:
        """The predictor's kind, the encoded items, for an adapter version the batches of its base that they join
        (its predictor then stays pinned: the caller releases it once its results are back), and how many of its
        batches may run at once (`Predictor.lanes`)."""
        predictor = self.cache.acquire(resolved.ref, task=resolved.task, path=resolved.path, timeout=timeout)
        try:
            group = self.cache.group(resolved.task, resolved.path)
            encoded = predictor.encode(items, **params)
            for item in encoded:
                item.source = predictor  # in a batch of several adapters' inputs, each runs with its own
        except BaseException:
            self.cache.release(resolved.ref)
            raise
        if group is None:
            self.cache.release(resolved.ref)  # a full version is pinned again by its batch
        # else an adapter stays pinned until its results are back (run() records its group, on the event loop:
        # _forget iterates `_groups` there, and an insert from this thread could break that iteration)
        return type(predictor), encoded, group, predictor.lanes

    def _batcher(self, resolved: Resolved, kind: type[Predictor], params: dict[str, Any], group: str | None = None,
                 lanes: int = 1) -> Batcher:
        """One batcher per model version and parameters (those `predict` reads): only requests that can share a
        call do. The adapter versions of one base share its batchers (`group`): their requests share forward
        passes."""
        name = group or resolved.ref
        key = (name, json.dumps(params, sort_keys=True, default=str))
        batcher = self._batchers.get(key)
        if batcher is None:
            # Encoders batch with no wait (as TEI does): an idle model runs a request at once, and under load a
            # batch is what queued while the previous forward ran. Generation waits a little (FTSERVE_MAX_BATCH_
            # WAIT_MS, stretched with its run time) so that concurrent calls can share one `generate`.
            zero_wait = kind.zero_wait
            batcher = Batcher(
                (lambda items: predict_on_base(items, params)) if group is not None
                else (lambda items: self._call(resolved, lambda p: p.predict(items, **params))), model=name,
                executor=self._thread("forward", name, workers=lanes), lanes=lanes,
                free_lanes=self._model_lanes(name, lanes),
                max_batch_size=self.settings.max_batch_size,
                max_wait=0.0 if zero_wait else self.settings.max_batch_wait_ms / 1000,
                wait_fraction=0.0 if zero_wait else 0.02,
                max_queue=self.settings.max_queue_items, on_idle=lambda: self._forget(key),
                cost=lambda items: kind.padded_tokens(items, **params),
                split=lambda items: kind.run_order(items, **params),
                max_cost=self.settings.max_batch_tokens,
                also_queued=lambda: sum(gate.waiting for ref, gate in self._streams.items()
                                        if self._groups.get(ref, ref) == name),
            )
            self._batchers[key] = batcher
        return batcher

    def _model_lanes(self, name: str, lanes: int) -> asyncio.Semaphore | None:
        """The lanes the batchers of model `name` share when it runs several batches at once; None for one lane:
        then each batcher keeps its own, as a batcher that waits to fill (/summarize) must not hold the model's
        only lane while it waits."""
        if lanes == 1:
            return None
        if name not in self._lanes:
            self._lanes[name] = asyncio.BoundedSemaphore(lanes)
        return self._lanes[name]

    def _drop_idle_encoder(self, owner: str) -> None:
        """The encode thread of `owner` when no batcher of it exists: only a batcher going idle (`_forget`) ends it
        otherwise, so a version whose requests all fail while encoded (a prompt past the context, a model that
        cannot load) would keep one idle thread for good. Work already queued on it still runs."""
        if not any(k[0] == owner for k in self._batchers):
            executor = self._executors.pop(("encode", owner), None)
            if executor is not None:
                executor.shutdown(wait=False)

    def _release_encoded(self, ref: str, encoding: Future[tuple[type[Predictor], list[Encoded], str | None, int]]
                         ) -> None:
        """The pin `_encode` kept on an adapter version, for a request that stopped waiting for its encoding."""
        if not encoding.cancelled() and encoding.exception() is None and encoding.result()[2] is not None:
            self.cache.release(ref)

    async def run(self, resolved: Resolved, items: list[Any], *,
                  is_disconnected: Callable[[], Awaitable[bool]] | None = None, timeout: float | None = None,
                  **params: Any) -> list[Any]:
        """Run `items` through the batcher of `resolved` (resolved once, before: an alias moved later does not
        affect this request); one result per item."""
        timeout = timeout or self.settings.request_timeout_seconds
        if TASKS[resolved.task].architecture == "decoder" and self.settings.continuous_batching:
            return await self.continuous.generate(
                resolved.ref, resolved.task, resolved.path, items, is_disconnected=is_disconnected,
                timeout=timeout, **params)
        deadline = time.monotonic() + timeout
        # Tokenized once, here in the request path (off the event loop, before the batcher): the batch budget counts
        # these real tokens, the forward pass reads them, and requests tokenize while the forward pass runs.
        encoder = self._groups.get(resolved.ref, resolved.ref)
        encoding = self._thread("encode", encoder).submit(self._encode, resolved, items, params, timeout)
        try:
            kind, encoded, group, lanes = await asyncio.wrap_future(encoding)
        except asyncio.CancelledError:
            # Cancelled while queued, the encoding never runs; cancelled while it runs, it ends on its thread and
            # would leave an adapter version pinned for good (its release is below, never reached): release it then.
            encoding.add_done_callback(partial(self._release_encoded, resolved.ref))
            raise
        except Exception:
            self._drop_idle_encoder(encoder)
            raise
        if group is not None:
            self._groups[resolved.ref] = group
        try:
            batcher = self._batcher(resolved, kind, kind.batch_params(params), group, lanes)
            return await batcher.submit(encoded, timeout=max(0.0, deadline - time.monotonic()),
                                        is_disconnected=is_disconnected)
        finally:
            if group is not None:  # the adapter was kept loaded (pinned) from its encoding until now
                self.cache.release(resolved.ref)


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
