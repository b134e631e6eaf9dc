"""Dynamic batching: requests for one model queue up and share forward passes.

Each request is a list of items and a future. One loop per batcher takes requests in arrival order
until the batch holds `max_batch_size` items (or, with a `cost` function, `max_cost` of what the batch costs:
e.g. the padded tokens its forward pass computes) or the wait has passed since the first one, drops those whose
deadline passed or whose client left (no compute for them), and runs the batch function in a thread, off
the event loop — once, or once per group of a `split` (a request is answered as soon as its own items are done,
so a short request batched with long ones need not wait for them). The wait is `max_wait`, stretched to
`wait_fraction` of a batch's measured run time (up to `max_wait_cap`): 5 ms means nothing to a 4 s `generate`
but lets concurrent callers join it. While a batch
runs, new requests queue up, so batches grow with load. A failed batch fails only its own requests; a full
queue is a 429 and a request past its deadline a 504.

With `lanes` > 1, up to that many batches run at once (on an executor with as many threads): for a model whose
calls do not spread over every core (ONNX Runtime, inference/onnx_runtime.py), so that two batches on two cores
beat one batch on two threads, which idle while a single-threaded op runs. A batch forms when a lane is free, from what
queued while every lane was busy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import anyio

from core.errors import ClientLeft, DeadlineExceeded, RateLimited
from inference import metrics

log = logging.getLogger("ftserve.inference")

BatchFn = Callable[[list[Any]], Sequence[Any]]


@dataclass
class _Request:
    items: list[Any]
    future: asyncio.Future[list[Any]]
    deadline: float
    is_disconnected: Callable[[], Awaitable[bool]] | None
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, fn: BatchFn, *, model: str, max_batch_size: int, max_wait: float, max_queue: int,
                 on_idle: Callable[[], None] | None = None, idle_seconds: float = 60.0,
                 cost: Callable[[list[Any]], int] | None = None, max_cost: int = 0,
                 wait_fraction: float = 0.02, max_wait_cap: float = 0.1, executor: Executor | None = None,
                 also_queued: Callable[[], int] | None = None,
                 split: Callable[[list[Any]], list[list[int]]] | None = None, lanes: int = 1,
                 free_lanes: asyncio.Semaphore | None = None) -> None:
        self.fn = fn
        self.lanes = max(1, lanes)
        # Shared by the batchers of one model (one per parameter set), which share its `lanes` forward threads.
        self._free_lanes = free_lanes if free_lanes is not None else asyncio.BoundedSemaphore(self.lanes)
        self._running: set[asyncio.Task[None]] = set()  # the batches running, a task each (one lane each)
        # How a batch runs: groups of indices into its items, one call of `fn` each, in order (e.g. inputs of
        # similar length together, shortest first); a request is answered once its own items have run.
        self.split = split
        # Requests for the same model waiting elsewhere (streams), counted against `max_queue` too.
        self.also_queued = also_queued
        self.executor = executor
        self.cost = cost
        self.max_cost = max_cost
        self.wait_fraction = wait_fraction
        self.max_wait_cap = max(max_wait, max_wait_cap)
        self.on_idle = on_idle
        self.idle_seconds = idle_seconds
        self.model = model
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._queue: deque[_Request] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy_seconds = 0.05  # running estimate of one batch's compute time, for Retry-After

    @property
    def depth(self) -> int:
        return self._queued_items

    async def submit(self, items: list[Any], *, timeout: float,
                     is_disconnected: Callable[[], Awaitable[bool]] | None = None) -> list[Any]:
        queued = self._queued_items + (self.also_queued() if self.also_queued is not None else 0)
        if queued + len(items) > self.max_queue:
            metrics.REJECTED.labels(model=self.model, reason="queue_full").inc()
            batches_ahead = max(1, self._queued_items // self.max_batch_size)
            raise RateLimited(
                f"model {self.model} has {queued} inputs queued (limit {self.max_queue}); retry later",
                retry_after=max(1.0, batches_ahead * self._busy_seconds / self.lanes),
            )
        loop = asyncio.get_running_loop()
        request = _Request(items, loop.create_future(), time.monotonic() + timeout, is_disconnected)
        self._queue.append(request)
        self._queued_items += len(items)
        metrics.QUEUE_DEPTH.labels(model=self.model).set(self._queued_items)
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name=f"batcher-{self.model}")
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), timeout)
        except TimeoutError:
            # Still queued: it is dropped before compute. Already running: its result is discarded.
            request.future.cancel()
            raise DeadlineExceeded(
                f"no result from model {self.model} within {timeout:g}s; the server is busy, retry later"
            ) from None

    @property
    def wait(self) -> float:
        """How long a batch waits to fill: `max_wait`, or a small share of what a batch takes to run."""
        return min(self.max_wait_cap, max(self.max_wait, self.wait_fraction * self._busy_seconds))

    def _take(self) -> list[_Request]:
        """Requests in arrival order up to max_batch_size items and max_cost (a request beyond either alone runs
        alone)."""
        batch: list[_Request] = []
        items: list[Any] = []
        while self._queue:
            nxt = self._queue[0]
            if batch and len(items) + len(nxt.items) > self.max_batch_size:
                break
            if batch and self.cost is not None and self.max_cost > 0 and self._over_budget(items + nxt.items):
                break
            self._queue.popleft()
            self._queued_items -= len(nxt.items)
            batch.append(nxt)
            items += nxt.items
        metrics.QUEUE_DEPTH.labels(model=self.model).set(self._queued_items)
        return batch

    def _over_budget(self, items: list[Any]) -> bool:
        """Whether `items` cost more than `max_cost`; a cost function that fails counts as over, so that the
        request it failed on runs in a batch of its own (unchecked) rather than stopping the loop."""
        assert self.cost is not None
        try:
            return self.cost(items) > self.max_cost
        except Exception:
            log.exception("the batch cost of %s failed; the next request runs in a batch of its own", self.model)
            return True

    async def _live(self, batch: list[_Request]) -> list[_Request]:
        live = []
        now = time.monotonic()
        for request in batch:
            if request.future.done():  # timed out while queued
                metrics.DROPPED.labels(model=self.model, reason="deadline").inc()
            elif request.deadline <= now:
                metrics.DROPPED.labels(model=self.model, reason="deadline").inc()
                request.future.cancel()  # its waiter is timing out right now
            elif request.is_disconnected is not None and await request.is_disconnected():
                metrics.DROPPED.labels(model=self.model, reason="client_left").inc()
                request.future.set_exception(ClientLeft("the client closed the connection before its batch ran"))
            else:
                live.append(request)
        return live

    async def _compute(self, items: list[Any]) -> Sequence[Any]:
        """The batch function off the event loop: on `executor` when given, else on a worker thread."""
        if self.executor is None:
            return await anyio.to_thread.run_sync(self.fn, items)
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, items)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self.idle_seconds)
                except TimeoutError:
                    if not self._queue and not self._running:
                        if self.on_idle is not None:
                            self.on_idle()  # e.g. forget this batcher: one per seed would pile up otherwise
                        return  # the next submit starts a new loop
                continue
            await self._free_lanes.acquire()
            try:
                batch = await self._form()
            except BaseException:
                self._free_lanes.release()
                raise
            if not batch:
                self._free_lanes.release()
                continue
            # The next batch forms once a lane is free again: with one lane, after this batch has run.
            task = asyncio.get_running_loop().create_task(self._run_batch(batch), name=f"batch-{self.model}")
            self._running.add(task)
            task.add_done_callback(self._lane_done)

    def _lane_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._free_lanes.release()
        if not task.cancelled() and task.exception() is not None:  # BaseException only: _run_batch catches the rest
            log.error("batch task of %s failed", self.model, exc_info=task.exception())

    async def _form(self) -> list[_Request]:
        """The next batch: wait up to `wait` from the first queued request for it to fill, then take it; only the
        requests whose caller still waits."""
        first = self._queue[0].enqueued
        while self._queued_items < self.max_batch_size:
            remaining = first + self.wait - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return await self._live(self._take())

    async def _run_batch(self, batch: list[_Request]) -> None:
        """Every group of the batch in turn; each request answered once its items have run. Never raises: an
        unexpected error (e.g. in `split`) fails the batch's requests not yet answered."""
        try:
            await self._run_groups(batch)
        except Exception as exc:
            log.exception("batch of %d requests for %s failed", len(batch), self.model)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)

    async def _run_groups(self, batch: list[_Request]) -> None:
        items = [item for request in batch for item in request.items]
        owners = [request for request in batch for _ in request.items]
        left = {id(request): len(request.items) for request in batch}  # items of each request not yet run
        results: list[Any] = [None] * len(items)
        t0 = time.perf_counter()
        for group in self.split(items) if self.split is not None else [list(range(len(items)))]:
            group = [i for i in group if not owners[i].future.done()]  # e.g. its deadline passed meanwhile
            if group:
                await self._run_group(group, items, owners, left, results)
        for request in batch:
            if not request.future.done():  # a split that left an input out: a bug, never a hang
                request.future.set_exception(RuntimeError(f"the batch split of {self.model} skipped inputs"))
        elapsed = time.perf_counter() - t0
        self._busy_seconds = 0.8 * self._busy_seconds + 0.2 * elapsed

    async def _run_group(self, group: list[int], items: list[Any], owners: list[_Request], left: dict[int, int],
                         results: list[Any]) -> None:
        """One call of the batch function on `items[group]`; every request whose items have now all run gets its
        results at once, before the next group runs."""
        metrics.BATCH_SIZE.labels(model=self.model).observe(len(group))
        try:
            out = await self._compute([items[i] for i in group])
            if len(out) != len(group):
                raise RuntimeError(f"batch returned {len(out)} results for {len(group)} inputs")
        except Exception as exc:
            log.exception("batch of %d inputs for %s failed", len(group), self.model)
            metrics.BATCH_FAILURES.labels(model=self.model).inc()
            for i in group:
                if not owners[i].future.done():
                    owners[i].future.set_exception(exc)
            return
        for i, result in zip(group, out, strict=True):
            results[i] = result
            request = owners[i]
            left[id(request)] -= 1
            if left[id(request)] == 0 and not request.future.done():
                # An item's result may be the exception that fails it alone, so one bad input does not fail the
                # requests it was batched with.
                chunk = [results[j] for j, owner in enumerate(owners) if owner is request]
                error = next((r for r in chunk if isinstance(r, BaseException)), None)
                if error is not None:
                    request.future.set_exception(error)
                else:
                    request.future.set_result(chunk)
