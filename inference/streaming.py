"""Streamed generation, bounded: admission through the model's queue limit, a few stream threads per model.

A streamed request waits in its model's queue like any other (the waiting streams and the batcher's queued inputs
share `FTSERVE_MAX_QUEUE_ITEMS`: 429 beyond), runs on one of `FTSERVE_MAX_STREAMS_PER_MODEL` threads of its own
beside the batches (a 500-token stream does not hold up the model's batched requests), and hands its text to
the event loop through an asyncio queue, so a stream, read or not, holds no thread while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.errors import ClientLeft, DeadlineExceeded, RateLimited
from inference import metrics

log = logging.getLogger("ftserve.inference")


class TokenSink:
    """Between the thread that generates one streamed request and the event loop that sends it.

    The generating side calls `start`, `text`, then `finish` or `fail`; `cancel` is set by the reading side when
    its client went away, and stops the generation at its next token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancel = threading.Event()

    def _put(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop closed (the API is shutting down): no one is reading any more
            self.cancel.set()

    def start(self) -> None:
        self._put("start", None)

    def text(self, chunk: str) -> None:
        self._put("text", chunk)

    def finish(self, result: dict[str, Any]) -> None:
        self._put("done", result)

    def fail(self, exc: BaseException) -> None:
        self._put("error", exc)


class StreamGate:
    """One model's streams: how many wait, how many run, and the threads they run on."""

    def __init__(self, *, model: str, running: int, on_idle: Callable[[], None]) -> None:
        self.model = model
        self.executor = ThreadPoolExecutor(running, thread_name_prefix=f"stream-{model}")
        self.slots = asyncio.Semaphore(running)
        self.waiting = 0
        self.open = 0
        self.on_idle = on_idle

    def admit(self, *, queued_elsewhere: int, max_queue: int) -> Ticket:
        """Refuse at the door (a plain 429) when the model's queue is full; else a ticket for one stream."""
        if self.waiting + queued_elsewhere + 1 > max_queue:
            metrics.REJECTED.labels(model=self.model, reason="queue_full").inc()
            raise RateLimited(f"model {self.model} has {self.waiting + queued_elsewhere} requests queued "
                              f"(limit {max_queue}); retry later", retry_after=2)
        self.waiting += 1
        self.open += 1
        return Ticket(self)


class Ticket:
    """One admitted stream's place in its gate, given back exactly once however the stream ends (also when its
    response is dropped before the stream ever started)."""

    def __init__(self, gate: StreamGate) -> None:
        self.gate = gate
        self.state = "waiting"

    def started(self) -> None:
        if self.state == "waiting":
            self.gate.waiting -= 1
            self.state = "running"

    def close(self) -> None:
        if self.state == "closed":
            return
        self.started()
        self.state = "closed"
        self.gate.open -= 1
        if self.gate.open == 0:
            self.gate.executor.shutdown(wait=False)  # its threads end once idle; a new stream makes a new gate
            self.gate.on_idle()


async def run_stream(ticket: Ticket, generate: Callable[[TokenSink], None], *, stops: list[str] | None,
                     timeout: float, is_disconnected: Callable[[], Any] | None = None
                     ) -> AsyncIterator[dict[str, Any]]:
    """Yields {"text": chunk} as text is produced, then {"done": {text, finish_reason, tokens}}.

    `generate(sink)` runs on one of the gate's threads once a slot is free; `timeout` bounds the wait for it.
    Chunks never include a stop sequence: text that could still turn into one is held back. Leaving early (the
    consumer stops iterating: the client went away) stops the generation at its next token."""
    gate = ticket.gate
    loop = asyncio.get_running_loop()
    sink = TokenSink(loop)

    def guarded() -> None:
        try:
            generate(sink)
        except Exception as exc:  # handed to the reader, which raises it in the request
            sink.fail(exc)

    try:
        try:
            await asyncio.wait_for(gate.slots.acquire(), max(0.0, timeout))
        except TimeoutError:
            metrics.DROPPED.labels(model=gate.model, reason="deadline").inc()
            raise DeadlineExceeded(f"no free stream slot on model {gate.model} within {timeout:g}s; "
                                   "the server is busy, retry later") from None
        ticket.started()
        try:
            if is_disconnected is not None and await is_disconnected():
                metrics.DROPPED.labels(model=gate.model, reason="client_left").inc()
                raise ClientLeft("the client closed the connection before its stream started")
            work = loop.run_in_executor(gate.executor, guarded)
            try:
                async for item in stream_chunks(sink, stops or []):
                    yield item
            finally:
                sink.cancel.set()  # a no-op after a finished generation; stops one whose reader went away
                await asyncio.shield(work)
        finally:
            gate.slots.release()
    finally:
        ticket.close()


async def stream_chunks(sink: TokenSink, stops: list[str]) -> AsyncIterator[dict[str, Any]]:
    """The sink's text as {"text"} chunks, holding back what could still become a stop sequence, then
    {"done": result}; a failure is raised."""
    hold = max((len(s) for s in stops), default=1) - 1
    text, sent = "", 0
    while True:
        kind, value = await sink.queue.get()
        if kind == "start":
            continue
        if kind == "error":
            raise value
        if kind == "done":
            if len(value["text"]) > sent:
                yield {"text": value["text"][sent:]}
            yield {"done": value}
            return
        text += value
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        safe = cut if cut >= 0 else max(sent, len(text) - hold)
        if safe > sent:
            yield {"text": text[sent:safe]}
            sent = safe
