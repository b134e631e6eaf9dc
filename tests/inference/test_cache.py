"""ModelCache: LRU under a count and a byte budget, pinned models never evicted, one load per key."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from core.errors import DeadlineExceeded, NotReady
from inference.cache import ModelCache


class Loads:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, task: str, path: str) -> Any:
        time.sleep(self.delay)
        with self.lock:
            self.calls.append(path)
        return {"path": path}


def make(capacity: int = 2, max_bytes: int = 0, delay: float = 0.0) -> tuple[ModelCache, Loads]:
    loads = Loads(delay)
    sizes = {"a": 40, "b": 40, "c": 40, "big": 100}
    return ModelCache(capacity=capacity, loader=loads, max_bytes=max_bytes, sizer=lambda p: sizes[p]), loads


def get(cache: ModelCache, key: str) -> Any:
    return cache.get(key, task="t", path=key)


def test_least_recently_used_is_evicted_and_reloads_on_demand() -> None:
    cache, loads = make(capacity=2)
    get(cache, "a"), get(cache, "b"), get(cache, "a"), get(cache, "c")  # b is the least recently used
    assert cache.loaded() == ["a", "c"]
    get(cache, "b")
    assert loads.calls == ["a", "b", "c", "b"] and cache.loaded() == ["c", "b"]


def test_byte_budget_evicts_until_the_new_model_fits() -> None:
    cache, _ = make(capacity=10, max_bytes=100)
    get(cache, "a"), get(cache, "b")
    get(cache, "c")  # 40 + 40 + 40 > 100: a goes
    assert cache.loaded() == ["b", "c"]
    get(cache, "big")  # bigger than what is left: everything idle goes
    assert cache.loaded() == ["big"]


def test_a_model_with_requests_in_flight_is_never_evicted() -> None:
    cache, _ = make(capacity=2)
    with cache.use("a", task="t", path="a"):
        get(cache, "b")
        get(cache, "c")  # a is pinned, so b (idle) goes even though a is older
        assert set(cache.loaded()) == {"a", "c"}


def test_a_load_waits_for_a_busy_slot_and_gives_up_at_its_deadline() -> None:
    cache, _ = make(capacity=1)
    cache.acquire("a", task="t", path="a")
    with pytest.raises(DeadlineExceeded, match="busy"):
        cache.acquire("b", task="t", path="b", timeout=0.2)
    threading.Timer(0.2, cache.release, args=("a",)).start()
    t0 = time.monotonic()
    with cache.use("b", task="t", path="b", timeout=5):
        assert 0.15 < time.monotonic() - t0 < 4 and cache.loaded() == ["b"]


def test_concurrent_first_requests_load_once() -> None:
    cache, loads = make(capacity=2, delay=0.2)
    threads = [threading.Thread(target=get, args=(cache, "a")) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads.calls == ["a"]


def test_a_failed_load_frees_its_reservation() -> None:
    def boom(task: str, path: str) -> Any:
        raise OSError("corrupt weights")

    cache = ModelCache(capacity=1, loader=boom, sizer=lambda p: 1)
    with pytest.raises(NotReady, match=r"model a could not be loaded.*corrupt weights"):
        get(cache, "a")
    cache._loader = Loads()
    assert get(cache, "b") == {"path": "b"}  # the slot was not leaked


def test_a_model_that_leaves_is_handed_to_on_unload_once() -> None:
    unloaded: list[Any] = []
    loads = Loads()
    cache = ModelCache(capacity=1, loader=loads, sizer=lambda p: 1, on_unload=unloaded.append)
    a = get(cache, "a")
    with cache.use("b", task="t", path="b") as b:  # a evicted for b
        assert unloaded == [a]
        cache.discard("b")  # in use: stays
        assert unloaded == [a]
    cache.discard("b")
    assert unloaded == [a, b] and cache.loaded() == []


def test_a_failing_on_unload_does_not_fail_the_load() -> None:
    def broken(_: Any) -> None:
        raise RuntimeError("cannot release")

    cache = ModelCache(capacity=1, loader=Loads(), sizer=lambda p: 1, on_unload=broken)
    get(cache, "a")
    assert get(cache, "b") == {"path": "b"} and cache.loaded() == ["b"]
