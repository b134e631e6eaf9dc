"""Loaded predictors under a budget: at most N models and, optionally, M bytes of weights.

The least recently used model goes first, but never one with requests in flight: a load that finds
every slot busy waits until one frees up or its deadline passes. Concurrent first requests for a
model load it once. A model that leaves (evicted or discarded) is handed to `on_unload`, outside the
cache's lock, so that what still holds it (a decode loop's thread) lets go of it at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import DeadlineExceeded, NotReady, scrub_paths
from inference import metrics

log = logging.getLogger("ftserve.inference")
LOAD_LOCK = threading.Lock()


def weights_on_disk(path: str) -> int:
    """Bytes of safetensors weights in a version dir: what loading it will take, known before loading."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


@dataclass
class _Entry:
    predictor: Any
    size: int
    in_flight: int = 0


class ModelCache:
    def __init__(self, *, capacity: int, loader: Callable[[str, str], Any], max_bytes: int = 0,
                 sizer: Callable[[str], int] = weights_on_disk,
                 on_evict: Callable[[str, Any], None] | None = None, gauge: Any = metrics.LOADED_MODELS,
                 on_unload: Callable[[Any], None] = lambda _predictor: None) -> None:
        self.capacity = max(1, capacity)
        self.max_bytes = max_bytes
        self._loader = loader
        self._sizer = sizer
        # Called with (key, predictor) once an entry is gone (evicted or discarded), outside the cache's lock: what
        # the predictor holds beyond its own objects (an adapter in a shared base) is given back there.
        self._on_evict = on_evict
        self._gauge = gauge
        # Called with the predictor at the same moment: what the predictor runs of its own (a decode loop) ends.
        self._on_unload = on_unload
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._reserved: dict[str, int] = {}  # room made for loads in progress
        self._loading: dict[str, threading.Lock] = {}
        self._cond = threading.Condition()
        self.load_seconds: dict[str, float] = {}

    @contextmanager
    def use(self, key: str, *, task: str, path: str, timeout: float = 300.0) -> Iterator[Any]:
        """The loaded predictor, pinned (not evictable) until the block ends."""
        predictor = self.acquire(key, task=task, path=path, timeout=timeout)
        try:
            yield predictor
        finally:
            self.release(key)

    def acquire(self, key: str, *, task: str, path: str, timeout: float = 300.0) -> Any:
        """Load if needed and pin; every acquire needs one `release(key)`."""
        return self._acquire(key, task=task, path=path, deadline=time.monotonic() + timeout).predictor

    def release(self, key: str) -> None:
        with self._cond:
            entry = self._items.get(key)
            if entry is not None and entry.in_flight > 0:
                entry.in_flight -= 1
            self._cond.notify_all()

    def get(self, key: str, *, task: str, path: str) -> Any:
        """Load (or touch) without pinning."""
        with self.use(key, task=task, path=path) as predictor:
            return predictor

    def _pin(self, key: str) -> _Entry | None:
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
            entry.in_flight += 1
        return entry

    def _acquire(self, key: str, *, task: str, path: str, deadline: float) -> _Entry:
        with self._cond:
            entry = self._pin(key)
            if entry is not None:
                return entry
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:  # one loader per key; the others wait here and then find it loaded
            with self._cond:
                entry = self._pin(key)
                if entry is not None:
                    return entry
            size = self._sizer(path)
            evicted: list[tuple[str, _Entry]] = []
            try:
                with self._cond:
                    self._make_room(key, size, deadline, evicted)
                    self._reserved[key] = size
            finally:  # what left the cache is given back (before loading: the new model's memory is what eviction
                # made room for), even when this load then finds no room and fails
                self._evicted(evicted)
            try:
                t0 = time.perf_counter()
                # One load at a time in the process: `from_pretrained` patches process-global torch state while
                # it builds a model on the meta device, and two threads loading at once leave it patched.
                with LOAD_LOCK:
                    predictor = self._loader(task, path)
            except BaseException as exc:
                with self._cond:
                    self._reserved.pop(key, None)
                    self._cond.notify_all()
                if isinstance(exc, Exception):
                    log.exception("loading %s from %s failed", key, path)
                    raise NotReady(f"model {key} could not be loaded ({type(exc).__name__}: "
                                   f"{scrub_paths(str(exc))[:200]}); "
                                   "its files may be damaged: re-register it or use another version") from exc
                raise
            elapsed = time.perf_counter() - t0
            self.load_seconds[key] = elapsed
            metrics.MODEL_LOAD_SECONDS.labels(model=key).observe(elapsed)
            log.info("loaded %s in %.2fs (%.1f MB of weights)", key, elapsed, size / 1e6)
            with self._cond:
                self._reserved.pop(key, None)
                entry = _Entry(predictor, size, in_flight=1)
                self._items[key] = entry
                self._loading.pop(key, None)
                self._gauge.set(len(self._items))
                return entry

    def _over(self, size: int) -> bool:
        used = sum(e.size for e in self._items.values()) + sum(self._reserved.values())
        count = len(self._items) + len(self._reserved)
        return count + 1 > self.capacity or (self.max_bytes > 0 and used + size > self.max_bytes)

    def _make_room(self, key: str, size: int, deadline: float, evicted: list[tuple[str, _Entry]]) -> None:
        """Evict idle models, least recently used first, until `size` more fits; wait while all are busy. The
        evicted entries are added to `evicted` (for `_evicted`, once the lock is released)."""
        while (self._items or self._reserved) and self._over(size):
            idle = next((k for k, e in self._items.items() if e.in_flight == 0), None)
            if idle is not None:
                evicted.append((idle, self._items.pop(idle)))
                self._gauge.set(len(self._items))
                log.info("evicted %s to make room for %s", idle, key)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"every loaded model is busy and {key} does not fit beside them; retry later")
            self._cond.wait(remaining)

    def _evicted(self, evicted: list[tuple[str, _Entry]]) -> None:
        for key, entry in evicted:
            if self._on_evict is not None:
                self._on_evict(key, entry.predictor)
            try:
                self._on_unload(entry.predictor)
            except Exception:  # the model is out of the cache either way; what held it may linger
                log.exception("releasing the unloaded model %s failed", key)

    def discard(self, key: str) -> None:
        """Unload `key` now if no request is using it (a deleted version); a busy one is left to eviction."""
        evicted: list[tuple[str, _Entry]] = []
        with self._cond:
            entry = self._items.get(key)
            if entry is not None and entry.in_flight == 0:
                evicted.append((key, self._items.pop(key)))
                self._gauge.set(len(self._items))
                self._cond.notify_all()
        self._evicted(evicted)

    def loaded(self) -> list[str]:
        with self._cond:
            return list(self._items)
