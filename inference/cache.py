"""Loaded predictors, least recently used evicted first; concurrent first requests load a model once."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from inference import metrics

log = logging.getLogger("ftserve.inference")


class ModelCache:
    def __init__(self, *, capacity: int, loader: Callable[[str, str], Any]) -> None:
        self.capacity = max(1, capacity)
        self._loader = loader
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.load_seconds: dict[str, float] = {}

    def get(self, key: str, *, task: str, path: str) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            t0 = time.perf_counter()
            predictor = self._loader(task, path)
            self.load_seconds[key] = time.perf_counter() - t0
            metrics.MODEL_LOAD_SECONDS.labels(model=key).observe(self.load_seconds[key])
            log.info("loaded %s in %.2fs", key, self.load_seconds[key])
            with self._lock:
                self._items[key] = predictor
                self._loading.pop(key, None)
                while len(self._items) > self.capacity:
                    evicted, _ = self._items.popitem(last=False)
                    log.info("evicted %s", evicted)
                metrics.LOADED_MODELS.set(len(self._items))
            return predictor

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._items)
