"""/generate through the model's decode loop (inference/decode.py): plain requests and streams alike.

The predictor is pinned in the model cache while its requests run; each prompt is one row of the loop. A plain
request waits for its rows with its deadline and gives them up (they leave the batch at their next token) when
the deadline passes or its client goes away; a stream's rows hand their text to the event loop as it is made.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import anyio

from core.errors import ClientLeft, DeadlineExceeded
from core.settings import Settings
from inference.cache import ModelCache
from inference.decode import CancelledRequest, DecodeLoop, Request
from inference.metrics import DROPPED, GENERATION_TOKENS_CANCELLED, GENERATIONS_CANCELLED
from inference.streaming import TokenSink, stream_chunks

log = logging.getLogger("ftserve.inference")
_LOOP_LOCK = threading.Lock()
DISCONNECT_POLL_SECONDS = 0.5
FIELDS = ("min_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop")


def decode_loop(predictor: Any, ref: str, settings: Settings) -> DecodeLoop:
    """The predictor's loop, made on first use (it lives and goes with the loaded predictor)."""
    with _LOOP_LOCK:
        loop = getattr(predictor, "decode_loop", None)
        if loop is None:
            loop = predictor.decode_loop = DecodeLoop(
                predictor.model, predictor.tokenizer, name=ref, finish=predictor._finish,
                max_tokens=settings.max_generation_tokens, max_queue=settings.max_queue_items,
                max_rows=settings.max_batch_size, device=predictor.device, context_error=predictor.context_error)
        return loop


def close_decode_loop(predictor: Any) -> None:
    """A model left the cache: its loop ends now (an idle loop's thread would hold the weights for another
    IDLE_SECONDS) and the predictor no longer refers to it, so nothing keeps the weights alive."""
    loop = getattr(predictor, "decode_loop", None)
    if loop is not None:
        loop.close()
        del predictor.decode_loop  # the loop refers back to the predictor (its finish): no cycle left for the GC


def _requests(predictor: Any, prompts: list[str], params: dict[str, Any], *, deadline: float,
              on_text: Callable[[str], None] | None = None) -> list[Request]:
    options = {k: params[k] for k in FIELDS if k in params}
    return [Request(list(predictor.tokenizer(p)["input_ids"]), int(params.get("max_new_tokens", 64)),
                    on_text=on_text, deadline=deadline, **options) for p in prompts]


class ContinuousGeneration:
    def __init__(self, cache: ModelCache, settings: Settings) -> None:
        self.cache, self.settings = cache, settings

    async def _prepared(self, ref: str, task: str, path: str, prompts: list[str], params: dict[str, Any], *,
                        timeout: float, deadline: float, on_text: Callable[[str], None] | None = None
                        ) -> tuple[Any, list[Request]]:
        """The predictor, pinned, and the prompts tokenized as its requests, in one worker-thread hop: under load
        every hop between the event loop and a thread waits for a CPU that the decode loop's threads hold (this
        one used to be two, loading then tokenizing)."""
        def prepare() -> tuple[Any, list[Request]]:
            predictor = self.cache.acquire(ref, task=task, path=path, timeout=timeout)
            try:
                return predictor, _requests(predictor, prompts, params, deadline=deadline, on_text=on_text)
            except BaseException:
                self.cache.release(ref)
                raise

        return await anyio.to_thread.run_sync(prepare)

    async def generate(self, ref: str, task: str, path: str, prompts: list[str], *, timeout: float,
                       is_disconnected: Callable[[], Awaitable[bool]] | None, **params: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout  # one deadline for loading, waiting and generating
        predictor, requests = await self._prepared(ref, task, path, prompts, params, timeout=timeout,
                                                   deadline=deadline)
        try:
            loop = decode_loop(predictor, ref, self.settings)
            futures: list[Future[dict[str, Any]]] = []
            try:
                for request in requests:
                    futures.append(loop.submit(request))  # a prompt past the context or a full queue: refused
                return await _wait(futures, timeout=max(0.0, deadline - time.monotonic()),
                                   is_disconnected=is_disconnected, model=ref)
            finally:
                for request in requests:
                    request.cancel.set()  # a no-op for a finished row; a row still running leaves the batch
        finally:
            self.cache.release(ref)

    async def open_stream(self, ref: str, task: str, path: str, prompt: str, *, timeout: float,
                          **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Queued (or refused: 422 past the context, 429 when the queue is full) before this returns. A stream not
        admitted to the batch within `timeout` ends with a `timeout` error event."""
        deadline = time.monotonic() + timeout
        sink = TokenSink(asyncio.get_running_loop())
        predictor, (request,) = await self._prepared(ref, task, path, [prompt], params, timeout=timeout,
                                                     deadline=deadline, on_text=sink.text)
        try:
            request.cancel = sink.cancel
            future = decode_loop(predictor, ref, self.settings).submit(request)
        except BaseException:
            self.cache.release(ref)
            raise

        def done(f: Future[dict[str, Any]]) -> None:
            if f.cancelled():
                sink.fail(ClientLeft("the stream was cancelled"))
            elif f.exception() is not None:
                sink.fail(f.exception())  # type: ignore[arg-type]
            else:
                result = f.result()
                if result.get("finish_reason") == "cancelled":  # its client went away
                    GENERATIONS_CANCELLED.labels(model=ref).inc()
                    GENERATION_TOKENS_CANCELLED.labels(model=ref).inc(int(result.get("tokens", 0)))
                    log.info("generation cancelled: the client went away after %s new tokens (model %s)",
                             result.get("tokens"), ref)
                sink.finish(result)

        future.add_done_callback(done)
        return LoopStream(sink, stops=params.get("stop"), release=lambda: self.cache.release(ref))


async def _wait(futures: list[Future[dict[str, Any]]], *, timeout: float,
                is_disconnected: Callable[[], Awaitable[bool]] | None, model: str) -> list[dict[str, Any]]:
    waiting = [asyncio.wrap_future(f) for f in futures]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            DROPPED.labels(model=model, reason="deadline").inc()
            raise DeadlineExceeded(f"no result from model {model} within {timeout:g}s; the server is busy, retry "
                                   "later")
        _, pending = await asyncio.wait(waiting, timeout=min(left, DISCONNECT_POLL_SECONDS))
        if not pending:
            try:
                return [w.result() for w in waiting]
            except CancelledRequest:
                raise ClientLeft("the generation was cancelled") from None
        if is_disconnected is not None and await is_disconnected():
            DROPPED.labels(model=model, reason="client_left").inc()
            raise ClientLeft("the client closed the connection before its generation ended")


class LoopStream:
    """A streamed generation's chunks. However it ends — read to its end, closed early, or closed before it was
    ever read (a client gone before the response started) — its row is cancelled and its model released, once."""

    def __init__(self, sink: TokenSink, *, stops: list[str] | None, release: Callable[[], None]) -> None:
        self._sink, self._release = sink, release
        self._chunks = stream_chunks(sink, stops or [])
        self._closed = False

    def __aiter__(self) -> LoopStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self._chunks.__anext__()
        except BaseException:  # the end (StopAsyncIteration), an error, or the reader cancelled
            self._close()
            raise

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            self._close()

    def _close(self) -> None:
        self._sink.cancel.set()  # a no-op for a finished row; a running one leaves the batch at its next token
        if not self._closed:
            self._closed = True
            self._release()
