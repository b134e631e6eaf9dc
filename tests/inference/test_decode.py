"""The continuous-batching decode loop (inference/decode.py) on a tiny GPT-2: rows of different lengths equal
their unbatched `generate`, a seed's text ignores its batch-mates, a request joins a running batch and leaves it
when done, a cancelled row frees its budget for a waiting request, and the budget is never exceeded."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from core.errors import RateLimited
from core.hfcache import cache_repo_dir
from inference.decode import DecodeLoop, Request
from inference.predictors.generation import GenerationPredictor
from tests.tiny_gpt2 import TINY_GPT2

SENTENCE = ("the king spoke to the queen of the north and then walked slowly along the old stone road toward "
            "the river where the boats were waiting in the morning light")


@pytest.fixture(scope="module")
def predictor(hf_home: Path) -> GenerationPredictor:
    (snapshot,) = list((cache_repo_dir(hf_home, TINY_GPT2) / "snapshots").iterdir())
    return GenerationPredictor(snapshot)


LOOPS: list[DecodeLoop] = []


@pytest.fixture(autouse=True)
def _close_loops() -> Any:
    yield
    while LOOPS:  # no decode thread may outlive its test (torch at interpreter exit aborts the process)
        LOOPS.pop().close()


def make_loop(predictor: GenerationPredictor, **kw: Any) -> DecodeLoop:
    opts = {"name": "tiny:1", "finish": predictor._finish, "max_tokens": 100_000, "max_queue": 64,
            "context_error": predictor.context_error, **kw}
    LOOPS.append(DecodeLoop(predictor.model, predictor.tokenizer, **opts))
    return LOOPS[-1]


def ids(predictor: GenerationPredictor, text: str) -> list[int]:
    return list(predictor.tokenizer(text)["input_ids"])


def prompts(count: int) -> list[str]:
    words = SENTENCE.split()
    return [" ".join(words[: 1 + 2 * i]) for i in range(count)]


def wait_until(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def held(loop: DecodeLoop, prompt: list[int], tokens: int) -> tuple[Request, threading.Event]:
    """A running request of exactly `tokens` new tokens that holds the loop at its first token until the returned
    event is set: the test then sees the loop's state while it runs."""
    started, go_on = threading.Event(), threading.Event()

    def hold(_: str) -> None:
        started.set()
        go_on.wait(60)

    request = Request(prompt, tokens, min_new_tokens=tokens, on_text=hold)
    loop.submit(request)
    assert started.wait(60)
    return request, go_on


def test_sixteen_prompts_of_different_lengths_equal_unbatched_generate(predictor: GenerationPredictor) -> None:
    loop = make_loop(predictor)
    texts = prompts(16)
    budgets = [4 + 5 * (i % 7) for i in range(16)]
    assert len({len(ids(predictor, t)) for t in texts}) == 16
    futures = [loop.submit(Request(ids(predictor, t), n)) for t, n in zip(texts, budgets, strict=True)]
    results = [f.result(120) for f in futures]
    reference = [predictor._one(t, max_new_tokens=n) for t, n in zip(texts, budgets, strict=True)]
    assert results == reference
    # Reserved: rows x the longest reservation (the padded KV buffer), back to 0 once every row has left.
    longest = max(len(ids(predictor, t)) + n for t, n in zip(texts, budgets, strict=True))
    assert loop.reserved == 0 and longest <= loop.high_water <= 16 * longest


def test_stop_strings_and_min_new_tokens_as_unbatched(predictor: GenerationPredictor) -> None:
    loop = make_loop(predictor)
    texts = prompts(6)
    futures = [loop.submit(Request(ids(predictor, t), 20, min_new_tokens=3, stop=["e"])) for t in texts]
    assert [f.result(60) for f in futures] == [predictor._one(t, max_new_tokens=20, min_new_tokens=3, stop=["e"])
                                               for t in texts]


def test_a_seeded_sample_does_not_depend_on_its_batch_mates(predictor: GenerationPredictor) -> None:
    def sample(prompt: str) -> Request:
        return Request(ids(predictor, prompt), 12, do_sample=True, seed=11, temperature=1.3, top_k=40, top_p=0.9)

    texts = prompts(5)
    alone = make_loop(predictor).submit(sample(texts[3])).result(60)
    loop = make_loop(predictor)
    futures = [loop.submit(sample(t) if i == 3 else Request(ids(predictor, t), 12 + i, do_sample=True))
               for i, t in enumerate(texts)]
    assert futures[3].result(60) == alone


def test_a_request_joins_a_running_generation_and_finishes_first(predictor: GenerationPredictor) -> None:
    loop = make_loop(predictor)
    chunks: list[str] = []
    long = loop.submit(Request(ids(predictor, "the king"), 200, min_new_tokens=200, on_text=chunks.append))
    wait_until("the long generation has started", lambda: len(chunks) >= 3)
    short = loop.submit(Request(ids(predictor, "the queen of the north"), 4))
    assert short.result(60)["tokens"] == 4
    assert not long.done()  # the short one was admitted into the running batch and left it when done
    assert long.result(120)["tokens"] == 200
    # A stream's chunks are its text as it grows (the last token's text comes with the result).
    assert long.result()["text"].startswith("".join(chunks)) and len(chunks) >= 150


def _first_text_after(request: Request, others: list[Request], record: dict[str, bool]) -> Request:
    """`request` with an on_text that records, at its first text, whether each of `others` had finished then."""
    def seen(_: str) -> None:
        if "first" not in record:
            record["first"] = True
            record.update({f"done{i}": other.future.done() for i, other in enumerate(others)})

    request.on_text = seen
    return request


def test_a_much_longer_request_lets_a_shorter_one_that_came_with_it_finish_first(
        predictor: GenerationPredictor) -> None:
    loop = make_loop(predictor)
    prompt = ids(predictor, "the king spoke to the queen")
    running, go_on = held(loop, prompt, 40)  # 40 new tokens: not much shorter than the long one (4 x 40 > 64)
    record: dict[str, bool] = {}
    short = Request(prompt, 8, min_new_tokens=8)
    long = _first_text_after(Request(prompt, 64, min_new_tokens=64), [short, running], record)
    loop.submit(long)
    loop.submit(short)  # after the long one, and 8 x SHORT_FIRST_RATIO <= 64
    go_on.set()
    assert long.future.result(120)["tokens"] == 64 and short.future.result(60)["tokens"] == 8
    # The long one was prefilled only once the short one had finished, though it came first; the 40-token row
    # was not waited for.
    assert record == {"first": True, "done0": True, "done1": False}


def test_a_shorter_request_that_came_later_takes_a_free_slot_first(predictor: GenerationPredictor) -> None:
    loop = make_loop(predictor, max_rows=1)  # one row at a time: every waiting request queues
    prompt = ids(predictor, "the king spoke to the queen")
    running, go_on = held(loop, prompt, 4)
    record: dict[str, bool] = {}
    short = Request(prompt, 9, min_new_tokens=9)  # 9 x SHORT_FIRST_RATIO > 32: it does not hold the long one back
    longer = _first_text_after(Request(prompt, 32, min_new_tokens=32), [short], record)
    loop.submit(longer)
    loop.submit(short)
    go_on.set()
    assert all(r.future.result(120)["tokens"] == n for r, n in [(running, 4), (longer, 32), (short, 9)])
    # The slot freed after a few turns, before the 32-token request had waited 32 / SHORT_FIRST_RATIO of them:
    # the 9-token one, though it came second, went first.
    assert record == {"first": True, "done0": True}


def test_a_long_request_passed_over_for_its_share_of_turns_goes_before_shorter_ones(
        predictor: GenerationPredictor) -> None:
    loop = make_loop(predictor, max_rows=1)  # one row at a time: every waiting request queues
    prompt = ids(predictor, "the king spoke to the queen")
    running, go_on = held(loop, prompt, 40)
    record: dict[str, bool] = {}
    shorts = [Request(prompt, 8, min_new_tokens=8) for _ in range(3)]
    long = _first_text_after(Request(prompt, 64, min_new_tokens=64), shorts, record)
    loop.submit(long)
    for short in shorts:
        loop.submit(short)
    go_on.set()
    assert all(r.future.result(120)["tokens"] == n
               for r, n in [(running, 40), (long, 64), *((s, 8) for s in shorts)])
    # The 40 turns of the running row passed it over for more than 64 / SHORT_FIRST_RATIO turns: when the row
    # left, the long request was overdue and took the slot before the shorter ones waiting with it.
    assert record == {"first": True, "done0": False, "done1": False, "done2": False}


def test_a_request_that_arrives_during_a_prefill_is_prefilled_before_the_next_step(
        predictor: GenerationPredictor) -> None:
    loop = make_loop(predictor)
    prompt = ids(predictor, "the king spoke to the queen")
    running, go_on = held(loop, prompt, 20)
    assert len(running.new) == 1  # held at its first token: inside its prefill, before any decoding step
    gaps: list[int] = []
    arriving = Request(prompt, 8, min_new_tokens=8)
    arriving.on_text = lambda _: gaps.append(len(running.new) - len(arriving.new))
    loop.submit(arriving)
    go_on.set()
    assert arriving.future.result(60)["tokens"] == 8 and running.future.result(60)["tokens"] == 20
    # Prefilled right after the prefill it arrived during, the new row is level with the running one at every
    # token (it would be one behind had it waited for the step after that prefill).
    assert gaps and set(gaps) == {0}


def test_a_much_longer_request_arriving_during_a_prefill_lets_that_row_finish_first(
        predictor: GenerationPredictor) -> None:
    loop = make_loop(predictor)
    prompt = ids(predictor, "the king spoke to the queen")
    running, go_on = held(loop, prompt, 16)
    assert len(running.new) == 1  # held inside its prefill
    record: dict[str, bool] = {}
    longer = _first_text_after(Request(prompt, 64, min_new_tokens=64), [running], record)
    loop.submit(longer)  # 16 x SHORT_FIRST_RATIO <= 64
    go_on.set()
    assert longer.future.result(120)["tokens"] == 64 and running.future.result(60)["tokens"] == 16
    assert record == {"first": True, "done0": True}


def test_a_cancelled_row_frees_its_budget_for_a_waiting_request(predictor: GenerationPredictor) -> None:
    first_ids = ids(predictor, "the king")
    budget = len(first_ids) + 150
    loop = make_loop(predictor, max_tokens=budget)  # room for one of these at a time
    first, go_on = held(loop, first_ids, 150)
    second = loop.submit(Request(first_ids, 150, min_new_tokens=150))
    assert loop.waiting == 1 and loop.reserved == budget  # over the budget: it waits
    first.cancel.set()
    go_on.set()
    assert first.future.result(60)["finish_reason"] == "cancelled"
    assert second.result(120)["tokens"] == 150  # the freed slot went to the waiting request
    assert loop.high_water == budget and loop.reserved == 0


def test_a_full_wait_queue_is_a_429(predictor: GenerationPredictor) -> None:
    first_ids = ids(predictor, "the king")
    loop = make_loop(predictor, max_tokens=len(first_ids) + 100, max_queue=1)
    running, go_on = held(loop, first_ids, 100)
    loop.submit(Request(first_ids, 100))  # waits
    with pytest.raises(RateLimited):
        loop.submit(Request(first_ids, 100))
    running.cancel.set()
    go_on.set()


def test_a_prompt_past_the_context_is_refused_at_submit(predictor: GenerationPredictor) -> None:
    from core.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match="context"):
        make_loop(predictor).submit(Request(ids(predictor, "the king"), 1000))


def test_an_empty_prompt_is_refused_and_a_failing_row_fails_alone(predictor: GenerationPredictor) -> None:
    from core.errors import ValidationFailed

    loop = make_loop(predictor)
    with pytest.raises(ValidationFailed, match="empty"):
        loop.submit(Request([], 4))
    good = loop.submit(Request(ids(predictor, "the king spoke"), 30))
    bad = loop.submit(Request(ids(predictor, "the queen"), 30, do_sample=True, temperature=0.0))  # cannot sample
    with pytest.raises(ValueError):
        bad.result(60)
    assert good.result(60) == predictor._one("the king spoke", max_new_tokens=30)


def test_a_request_not_admitted_by_its_deadline_times_out(predictor: GenerationPredictor) -> None:
    from core.errors import DeadlineExceeded

    first_ids = ids(predictor, "the king")
    loop = make_loop(predictor, max_tokens=len(first_ids) + 100)
    running, go_on = held(loop, first_ids, 100)
    late = loop.submit(Request(first_ids, 100, deadline=time.monotonic() + 0.05))
    time.sleep(0.1)
    go_on.set()
    with pytest.raises(DeadlineExceeded):
        late.result(60)
    assert running.future.result(60)["tokens"] == 100


def test_a_stream_closed_before_it_was_read_releases_its_model_once() -> None:
    import asyncio

    from inference.continuous import LoopStream
    from inference.streaming import TokenSink

    async def main() -> None:
        released: list[int] = []
        sink = TokenSink(asyncio.get_running_loop())
        stream = LoopStream(sink, stops=None, release=lambda: released.append(1))
        await stream.aclose()  # never iterated: a client gone before the response started
        await stream.aclose()
        assert released == [1] and sink.cancel.is_set()

    asyncio.run(main())


def test_an_evicted_model_s_loop_ends_and_lets_go_of_the_weights(hf_home: Path) -> None:
    import gc
    import weakref

    from core.settings import Settings
    from inference.cache import ModelCache
    from inference.continuous import close_decode_loop, decode_loop

    (snapshot,) = list((cache_repo_dir(hf_home, TINY_GPT2) / "snapshots").iterdir())
    cache = ModelCache(capacity=1, loader=lambda _task, path: GenerationPredictor(Path(path)), sizer=lambda _p: 1,
                       on_unload=close_decode_loop)
    settings = Settings(max_generation_tokens=10_000, max_queue_items=8, max_batch_size=8)
    with cache.use("tiny:1", task="generation", path=str(snapshot)) as loaded:
        loop = decode_loop(loaded, "tiny:1", settings)
        assert loop.submit(Request(ids(loaded, "the king"), 4)).result(60)["tokens"] == 4
        model = weakref.ref(loaded.model)
    thread = loop._thread
    del loaded, loop
    assert thread is not None and thread.is_alive()  # an idle loop waits IDLE_SECONDS for more work
    cache.get("tiny:2", task="generation", path=str(snapshot))  # evicts tiny:1
    assert not thread.is_alive()
    gc.collect()  # (transformers' modules hold reference cycles of their own)
    assert model() is None, gc.get_referrers(model())


def test_the_budget_counts_each_row_as_long_as_the_longest(predictor: GenerationPredictor) -> None:
    long_ids, short_ids = ids(predictor, "the king"), ids(predictor, "the queen of the north")
    # Room for one 100-token row and a 2-token one if only their own tokens counted, but not once the short
    # row is padded to the long one (which is how the KV buffer holds them).
    budget = 2 * (len(long_ids) + 100) - 1
    loop = make_loop(predictor, max_tokens=budget)
    running, go_on = held(loop, long_ids, 100)
    short = loop.submit(Request(short_ids, 2))
    assert loop.waiting == 1 and loop.reserved == len(long_ids) + 100
    go_on.set()
    assert short.result(60)["tokens"] == 2
    assert running.future.done()  # the short request started only once the long one had left
    assert loop.high_water == len(long_ids) + 100


def test_the_kv_buffer_never_holds_more_positions_than_the_budget(predictor: GenerationPredictor) -> None:
    texts = prompts(8)
    budgets = [30, 4, 12, 25, 3, 18, 9, 27]
    longest = max(len(ids(predictor, t)) + n for t, n in zip(texts, budgets, strict=True))
    loop = make_loop(predictor, max_tokens=3 * longest)  # about three rows at a time
    seen: list[tuple[int, int]] = []

    def watch(_: str) -> None:  # called on the loop's thread at every token: the buffer as it is then
        seen.append((loop.kv_positions, loop.reserved))

    futures = [loop.submit(Request(ids(predictor, t), n, min_new_tokens=n, on_text=watch))
               for t, n in zip(texts, budgets, strict=True)]
    assert [f.result(120)["tokens"] for f in futures] == budgets
    assert max(kv for kv, _ in seen) > longest  # rows did share the buffer
    assert all(kv <= 3 * longest and reserved <= 3 * longest for kv, reserved in seen)
    assert loop.high_water <= 3 * longest and loop.reserved == 0 and loop.kv_positions == 0


def test_a_stream_ends_with_the_error_its_row_met(hf_home: Path) -> None:
    """What a stream's reader gets is the row's own error (the route turns its type into the event's error type and
    the status counted in /metrics): a deadline passed while waiting is a DeadlineExceeded, a row that cannot sample
    its ValueError, and the model goes on serving."""
    import asyncio

    from core.errors import DeadlineExceeded
    from core.settings import Settings
    from inference.cache import ModelCache
    from inference.continuous import ContinuousGeneration, close_decode_loop, decode_loop

    (snapshot,) = list((cache_repo_dir(hf_home, TINY_GPT2) / "snapshots").iterdir())
    cache = ModelCache(capacity=1, loader=lambda _task, path: GenerationPredictor(Path(path)), sizer=lambda _p: 1,
                       on_unload=close_decode_loop)
    prompt = "the king"
    service = ContinuousGeneration(cache, Settings(max_generation_tokens=100, max_queue_items=8))

    async def read(**params: Any) -> list[dict[str, Any]]:
        stream = await service.open_stream("tiny:1", "generation", str(snapshot), prompt, **params)
        return [chunk async for chunk in stream]

    async def main() -> None:
        with pytest.raises(ValueError):  # temperature 0: no distribution to sample from
            await read(timeout=60, max_new_tokens=4, do_sample=True, temperature=0.0)
        predictor = cache.get("tiny:1", task="generation", path=str(snapshot))
        running, go_on = held(decode_loop(predictor, "tiny:1", service.settings), ids(predictor, prompt), 90)
        threading.Timer(0.5, go_on.set).start()  # the loop goes on past the stream's deadline; the row runs on
        with pytest.raises(DeadlineExceeded):  # the running row holds the whole budget past the stream's deadline
            await read(timeout=0.2, max_new_tokens=4)
        assert running.future.result(60)["tokens"] == 90
        assert (await read(timeout=60, max_new_tokens=3))[-1]["done"]["tokens"] == 3

    try:
        asyncio.run(main())
    finally:
        for key in cache.loaded():
            cache.discard(key)
