"""Batcher: requests share batches, results go back in order, failures stay in their batch, backpressure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from core.errors import ClientLeft, DeadlineExceeded, RateLimited
from inference.batcher import Batcher
from tests.inference.helpers import until


class Model:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[Any]) -> Sequence[Any]:
        self.gate.wait(10)
        self.batches.append(list(items))
        if "boom" in items:
            raise RuntimeError("forward failed")
        return [f"out:{x}" for x in items]


def batcher(model: Model, **kw: Any) -> Batcher:
    opts = {"model": "m:1", "max_batch_size": 8, "max_wait": 0.02, "max_queue": 100, **kw}
    return Batcher(model, **opts)


def test_concurrent_requests_share_a_batch_and_get_their_own_results() -> None:
    async def main() -> None:
        model = Model()
        b = batcher(model)
        results = await asyncio.gather(*(b.submit([f"x{i}", f"y{i}"], timeout=5) for i in range(4)))
        assert results == [[f"out:x{i}", f"out:y{i}"] for i in range(4)]
        assert len(model.batches) == 1 and len(model.batches[0]) == 8

    asyncio.run(main())


def test_batches_never_exceed_the_maximum_size() -> None:
    async def main() -> None:
        model = Model()
        b = batcher(model, max_batch_size=4)
        await asyncio.gather(*(b.submit([i], timeout=5) for i in range(10)))
        assert [len(x) for x in model.batches] == [4, 4, 2]

    asyncio.run(main())


def test_the_token_budget_counts_padded_cost_and_a_costly_request_still_runs_alone() -> None:
    async def main() -> None:
        model = Model()
        model.gate.clear()  # hold the first batch so that the rest queue up behind it
        b = batcher(model, max_batch_size=32, cost=lambda items: len(items) * max(map(len, items)), max_cost=40)
        first = asyncio.ensure_future(b.submit(["warm"], timeout=5))
        await asyncio.sleep(0)
        while b.depth:  # until the loop has taken "warm" (its batch then blocks on the gate)
            await asyncio.sleep(0.001)
        texts = ["a" * 5] * 6 + ["b" * 10, "c" * 60, "d" * 5]
        rest = asyncio.gather(*(b.submit([t], timeout=5) for t in texts))
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        assert await rest == [[f"out:{t}"] for t in texts]
        sizes = [[len(x) for x in batch] for batch in model.batches[1:]]
        # 6 × 5 = 30 fits; a 7th input of 10 would pad to 7 × 10 = 70 > 40: a new batch. 60 exceeds the
        # budget alone and runs alone.
        assert sizes == [[5] * 6, [10], [60], [5]]

    asyncio.run(main())


def test_the_wait_stretches_with_the_batch_run_time_up_to_its_cap() -> None:
    b = batcher(Model(), max_wait=0.005, wait_fraction=0.02, max_wait_cap=0.05)
    b._busy_seconds = 0.02
    assert b.wait == 0.005  # 2 % of a 20 ms forward is under the configured wait
    b._busy_seconds = 1.0
    assert b.wait == pytest.approx(0.02)
    b._busy_seconds = 10.0
    assert b.wait == 0.05


def test_with_no_wait_an_idle_model_runs_a_request_alone_and_batches_form_from_what_queued_meanwhile() -> None:
    async def main() -> None:
        model = Model()
        model.gate.clear()  # the first forward runs until released
        b = batcher(model, max_wait=0.0, wait_fraction=0.0)
        first = asyncio.ensure_future(b.submit(["alone"], timeout=5))
        await asyncio.sleep(0)
        while b.depth:  # taken at once: no wait for a second request to join
            await asyncio.sleep(0.001)
        rest = asyncio.gather(*(b.submit([f"q{i}"], timeout=5) for i in range(3)))
        await asyncio.sleep(0.02)
        model.gate.set()
        assert await first == ["out:alone"]
        assert await rest == [[f"out:q{i}"] for i in range(3)]
        assert model.batches == [["alone"], ["q0", "q1", "q2"]]  # the three that queued while it ran, together
        assert b.wait == 0.0

    asyncio.run(main())


def test_a_failing_batch_fails_only_its_own_requests() -> None:
    async def main() -> None:
        model = Model()
        b = batcher(model, max_batch_size=2)
        results = await asyncio.gather(b.submit(["boom"], timeout=5), b.submit(["ok1"], timeout=5),
                                       b.submit(["ok2"], timeout=5), return_exceptions=True)
        assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError)  # same batch
        assert results[2] == ["out:ok2"]  # next batch: fine
        assert await b.submit(["later"], timeout=5) == ["out:later"]  # the batcher goes on

    asyncio.run(main())


def test_a_full_queue_is_rate_limited_with_a_retry_after() -> None:
    async def main() -> None:
        model = Model()
        model.gate.clear()  # the model is busy
        b = batcher(model, max_batch_size=2, max_queue=4)
        first = asyncio.ensure_future(b.submit([1, 2], timeout=5))
        await asyncio.sleep(0.1)  # taken into a batch, blocked in the model
        queued = asyncio.ensure_future(b.submit([3, 4, 5, 6], timeout=5))
        await asyncio.sleep(0.01)
        with pytest.raises(RateLimited) as info:
            await b.submit([7], timeout=5)
        assert info.value.retry_after >= 1
        model.gate.set()
        assert await first == ["out:1", "out:2"] and await queued == ["out:3", "out:4", "out:5", "out:6"]

    asyncio.run(main())


def test_past_its_deadline_a_queued_request_times_out_and_is_never_computed() -> None:
    async def main() -> None:
        model = Model()
        model.gate.clear()
        b = batcher(model, max_batch_size=1)
        busy = asyncio.ensure_future(b.submit(["busy"], timeout=5))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await b.submit(["late"], timeout=0.1)
        model.gate.set()
        assert await busy == ["out:busy"]
        await asyncio.sleep(0.1)
        assert ["late"] not in model.batches

    asyncio.run(main())


def test_a_request_whose_client_left_is_dropped_before_compute() -> None:
    async def main() -> None:
        model = Model()
        model.gate.clear()
        b = batcher(model, max_batch_size=1)
        busy = asyncio.ensure_future(b.submit(["busy"], timeout=5))
        await asyncio.sleep(0.05)

        async def gone() -> bool:
            return True

        left = asyncio.ensure_future(b.submit(["left"], timeout=5, is_disconnected=gone))
        await asyncio.sleep(0.05)
        model.gate.set()
        assert await busy == ["out:busy"]
        with pytest.raises(ClientLeft):
            await left
        assert ["left"] not in model.batches

    asyncio.run(main())


def test_an_idle_batcher_reports_it_and_a_later_request_still_runs() -> None:
    async def main() -> None:
        idle: list[bool] = []
        b = Batcher(Model(), model="m:1", max_batch_size=4, max_wait=0.0, max_queue=10,
                    on_idle=lambda: idle.append(True), idle_seconds=0.05)
        assert await b.submit([1], timeout=5) == ["out:1"]
        await asyncio.sleep(0.2)
        assert idle == [True]
        assert await b.submit([2], timeout=5) == ["out:2"]

    asyncio.run(main())


def test_an_item_whose_result_is_an_exception_fails_only_its_own_request() -> None:
    from core.errors import ValidationFailed

    def model(items: list[Any]) -> Sequence[Any]:
        return [ValidationFailed(f"{x} is too long") if x == "long" else f"out:{x}" for x in items]

    async def main() -> None:
        b = batcher(model)  # type: ignore[arg-type]
        results = await asyncio.gather(b.submit(["a"], timeout=5), b.submit(["b", "long"], timeout=5),
                                       b.submit(["c"], timeout=5), return_exceptions=True)
        assert results[0] == ["out:a"] and results[2] == ["out:c"]
        assert isinstance(results[1], ValidationFailed) and "long is too long" in results[1].message

    asyncio.run(main())


def by_length(items: list[Any]) -> list[list[int]]:
    """A split: items under 10 characters in one group, the rest in another, the short group first."""
    short = [i for i, x in enumerate(items) if len(x) < 10]
    long = [i for i, x in enumerate(items) if len(x) >= 10]
    return [g for g in (short, long) if g]


def test_a_split_batch_answers_a_short_request_while_the_long_group_it_was_batched_with_still_runs() -> None:
    long_gate = threading.Event()

    class Slow(Model):
        def __call__(self, items: list[Any]) -> Sequence[Any]:
            if len(items[0]) >= 10:
                assert long_gate.wait(10)  # the long group runs until released
            return super().__call__(items)

    async def main() -> None:
        model = Slow()
        model.gate.clear()  # hold the first batch so that the next requests share one batch
        b = batcher(model, max_batch_size=32, split=by_length)
        first = asyncio.ensure_future(b.submit(["warm"], timeout=5))
        await asyncio.sleep(0)
        while b.depth:  # until the loop has taken "warm" (its batch then blocks on the gate)
            await asyncio.sleep(0.001)
        long = asyncio.ensure_future(b.submit(["l" * 50, "m" * 60], timeout=10))  # arrives first
        short = asyncio.ensure_future(b.submit(["s"], timeout=10))
        while b.depth < 3:
            await asyncio.sleep(0.001)
        model.gate.set()
        await first
        assert await asyncio.wait_for(short, 5) == ["out:s"]  # answered while the long group is held
        assert not long.done()
        long_gate.set()
        assert await long == ["out:" + "l" * 50, "out:" + "m" * 60]
        assert model.batches[1:] == [["s"], ["l" * 50, "m" * 60]]  # one batch taken, run as two groups

    asyncio.run(main())


def test_a_failing_group_fails_only_the_requests_with_inputs_in_it() -> None:
    async def main() -> None:
        model = Model()
        model.gate.clear()
        b = batcher(model, max_batch_size=32, split=by_length)
        first = asyncio.ensure_future(b.submit(["warm"], timeout=5))
        await asyncio.sleep(0)
        while b.depth:  # until the loop has taken "warm" (its batch then blocks on the gate)
            await asyncio.sleep(0.001)
        requests = [b.submit(["boom"], timeout=5), b.submit(["x" * 20], timeout=5),
                    b.submit(["ok", "y" * 30], timeout=5)]
        gathered = asyncio.gather(*requests, return_exceptions=True)
        while b.depth < 4:
            await asyncio.sleep(0.001)
        model.gate.set()
        await first
        results = await gathered
        # "boom" and "ok" share the short group: both of their requests fail; the long group still runs, without
        # the failed request's long input (no compute for a request that has its answer).
        assert isinstance(results[0], RuntimeError) and isinstance(results[2], RuntimeError)
        assert results[1] == ["out:" + "x" * 20]
        assert model.batches[-1] == ["x" * 20]

    asyncio.run(main())


class Lanes:
    """A batch function that records how many of its calls run at once; each call waits on `gate`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.gate = threading.Event()
        self.batches: list[list[Any]] = []

    def __call__(self, items: list[Any]) -> Sequence[Any]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.batches.append(list(items))
        self.gate.wait(10)
        with self.lock:
            self.running -= 1
        return [f"out:{x}" for x in items]


def test_with_two_lanes_two_batches_run_at_once_and_the_next_forms_from_what_queued_meanwhile() -> None:
    async def main() -> None:
        model = Lanes()
        with ThreadPoolExecutor(2) as pool:
            b = batcher(model, max_batch_size=2, max_wait=0.0, lanes=2, executor=pool)
            first = []
            for i in range(2):  # each runs at once, on a lane of its own: the second does not wait for the first
                first.append(asyncio.ensure_future(b.submit([i], timeout=5)))
                await until(f"batch {i} running", lambda i=i: model.running == i + 1, 5)
            rest = [asyncio.ensure_future(b.submit([i], timeout=5)) for i in range(2, 7)]
            await asyncio.sleep(0.05)
            assert model.running == 2 and b.depth == 5  # every lane busy: the rest wait, none runs a third batch
            model.gate.set()
            assert await asyncio.gather(*first, *rest) == [[f"out:{i}"] for i in range(7)]
        assert model.most == 2
        assert [len(x) for x in model.batches[:2]] == [1, 1]
        assert sorted(x for batch in model.batches for x in batch) == list(range(7))
        assert all(len(x) <= 2 for x in model.batches)

    asyncio.run(main())


def test_with_one_lane_a_batch_waits_for_the_one_before() -> None:
    async def main() -> None:
        model = Lanes()
        with ThreadPoolExecutor(2) as pool:  # a second thread is there, but the batcher has one lane
            b = batcher(model, max_batch_size=1, max_wait=0.0, executor=pool)
            tasks = [asyncio.ensure_future(b.submit([i], timeout=5)) for i in range(3)]
            await until("a batch running", lambda: model.running == 1, 5)
            await asyncio.sleep(0.05)
            assert model.running == 1 and b.depth == 2
            model.gate.set()
            assert await asyncio.gather(*tasks) == [[f"out:{i}"] for i in range(3)]
        assert model.most == 1

    asyncio.run(main())


def test_an_idle_batcher_with_lanes_waits_for_its_running_batches_before_it_reports_idle() -> None:
    async def main() -> None:
        idle: list[bool] = []
        model = Lanes()
        with ThreadPoolExecutor(2) as pool:
            b = batcher(model, max_wait=0.0, lanes=2, executor=pool, idle_seconds=0.02,
                        on_idle=lambda: idle.append(True))
            task = asyncio.ensure_future(b.submit(["slow"], timeout=5))
            await until("a batch running", lambda: model.running == 1, 5)
            await asyncio.sleep(0.1)  # several idle periods pass while the batch runs on its lane
            assert idle == []
            model.gate.set()
            assert await task == ["out:slow"]
            await until("idle reported", lambda: idle == [True], 5)

    asyncio.run(main())


def test_a_batch_whose_split_fails_fails_its_requests_and_the_batcher_goes_on() -> None:
    async def main() -> None:
        def split(items: list[Any]) -> list[list[int]]:
            if "bad" in items:
                raise ValueError("no order for these")
            return [list(range(len(items)))]

        for lanes in (1, 2):
            with ThreadPoolExecutor(lanes) as pool:
                b = batcher(Model(), max_wait=0.0, split=split, lanes=lanes, executor=pool)
                with pytest.raises(ValueError, match="no order"):
                    await b.submit(["bad"], timeout=5)
                assert await b.submit(["good"], timeout=5) == ["out:good"]

    asyncio.run(main())


def test_a_failing_cost_function_runs_each_request_alone_instead_of_stopping_the_batcher() -> None:
    async def main() -> None:
        def cost(items: list[Any]) -> int:
            if len(items) > 1:
                raise ValueError("cannot price this batch")
            return 1

        model = Model()
        b = batcher(model, max_wait=0.02, cost=cost, max_cost=10)
        results = await asyncio.gather(*(b.submit([i], timeout=5) for i in range(3)))
        assert results == [[f"out:{i}"] for i in range(3)]
        assert model.batches == [[0], [1], [2]]

    asyncio.run(main())
