"""Continuous batching for causal-LM generation: one decode loop per loaded model, scheduled per decoding step.

A request is prefilled (its prompt's forward pass gives its first token and its KV cache) and joins the running
batch at the next step. Requests admitted together are prefilled in a few left-padded forward passes of prompts of
similar length (so a 4-token prompt is not padded to 64), at most `PREFILL_TOKENS` prompt tokens between two
decoding steps, so that a burst of new prompts does not stall the running rows for long; requests that arrive
while those passes run are prefilled right after them (at most `PREFILL_TOKENS` more), so that a new request's
first token waits for the prefill in flight but not for the decoding step after it too.

The batch's KV cache is one preallocated buffer per layer, [slots, heads, capacity, dim]: rows are left-padded so
that every row's next token goes in the same column, with an attention mask and positions counted per row from
its own first token, so each row computes what it would alone. A decoding step writes one column in place (a
DynamicCache would copy the whole cache at every step) and attends over the window of columns some row uses. The
buffer is laid out anew (copied once, without the columns that are padding in every row) when rows join, or when
its columns run out; a row that leaves gives up its slot in place (the last row moves into it). Every step runs
one forward pass over all rows and picks each row's next token with that row's own settings: greedy rows in one
argmax, sampling or penalized rows one by one (sampling with the row's own seeded generator, so a seed's text
depends on nothing else). A row leaves at once when it ends (EOS after `min_new_tokens`, a stop string,
`max_new_tokens`, or its caller gone).

Memory: a layout holds rows x capacity positions, where the capacity is the longest row's prompt +
`max_new_tokens` (a row's tokens never need more columns than that, once the padding columns are dropped). That
product is what admission reserves and bounds by `max_tokens`: requests join only if (rows + them) x the longest
reservation among all fits, so a short request beside a long one counts as long as the long one (its row is
padded to it). Rows that leave free their slots but not the buffer, until the next layout. Beyond the bound
requests wait; a full wait queue is a 429. Transiently, while rows join, the prompts' own prefill
caches and the old buffer exist beside the new one.

Admission order, shorter first: on a CPU a decoding step of 16 rows costs two to three times a step of one, and a
prompt's prefill about as much per token as a row's step, so a 16-token request that arrives with fifteen longer
ones spends most of its time on their prefills and rows. Waiting requests are admitted fewest `max_new_tokens`
first, and one that asks for `SHORT_FIRST_RATIO` (4) times the new tokens of a request that was running, being
prefilled or waiting when the loop first considered it (in the turn it arrived in, or the next) lets that one finish
before it is prefilled. That holds a request back for at most 1/4 of its own `max_new_tokens` in loop turns (a turn
is one admission, with the requests that arrive during its prefill, and at most one decoding step: a 128-token
request for 32 turns, about a quarter of its own time); after that it is overdue, and overdue requests go first, in
arrival order (they may still wait for room, as any request does).

Streamed requests are rows like any other: their text is handed on as each token is decoded.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from core.errors import DeadlineExceeded, RateLimited, ValidationFailed
from inference import metrics

log = logging.getLogger("ftserve.inference")
IDLE_SECONDS = 30.0  # an idle loop's thread ends; the next request starts a new one
PREFILL_BATCH = 16  # prompts in one prefill forward pass, at most
# Prompt tokens prefilled between two decoding steps, at most (one prompt longer than that goes alone; requests that
# arrive during that prefill get as many more): a burst of new requests holds the running rows for one such slice
# at a time, not for all of its prompts, and a new request waits for at most the slices of those ahead of it.
# bench/serve_bench.py --generate-only, 16 mixed clients on 2 CPU cores (2026-12-07): first token under load 5.1x
# idle at 512, 3.4x at 128 and at 64; tokens/s unchanged.
PREFILL_TOKENS = 128
# What one more prefill forward pass costs, counted in prompt tokens: on CPU a pass reads every weight once
# (~20 ms for a distilgpt2-sized model, as much as ~30 tokens of prefill on 2 cores). Prompts are split into passes
# of similar lengths when the padding that saves is worth more than this.
PREFILL_PASS_TOKENS = 32
# Shorter first (see the module's docstring): a waiting request lets requests with 1/SHORT_FIRST_RATIO of its
# max_new_tokens or fewer finish before its prefill, for at most 1/SHORT_FIRST_RATIO of its max_new_tokens in turns.
# bench/serve_bench.py --generate-only (bench/RESULTS.md, 2026-12-07): 16-token requests among 16 mixed ones sent at
# once finished in 2.6x their idle time instead of 4.2-5.3x.
SHORT_FIRST_RATIO = 4


@dataclass(eq=False)
class Request:
    """One prompt in the loop. `on_text` (streams) gets decoded text as it is produced; `future` the result."""

    prompt: list[int]
    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    on_text: Callable[[str], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[dict[str, Any]] = field(default_factory=Future)
    # Set by the loop:
    new: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded text handed to on_text
    generator: Any = None
    deadline: float | None = None  # monotonic: not admitted by then, it fails with DeadlineExceeded
    after: list[Request] | None = None  # much shorter requests it lets finish first (see SHORT_FIRST_RATIO)
    considered: int = -1  # the loop's turn when it was first considered for admission

    @property
    def reserved(self) -> int:
        """The positions its row may fill: its prompt and every token it may generate."""
        return len(self.prompt) + self.max_new_tokens

    @property
    def plain(self) -> bool:
        """Its next token is the argmax of the (EOS-masked) logits: picked with the batch's, not alone."""
        return not self.do_sample and self.repetition_penalty == 1.0


# How a row ended: "done", "cancelled", or the error it failed with; None while it goes on.
Ending = str | BaseException | None


@dataclass
class _Part:
    """Rows to lay out in the batch's buffer: per layer keys and values [rows, heads, width, dim] and the mask
    [rows, width], left-padded (each row's tokens end at the last column)."""

    rows: list[Request]
    keys: list[Any]
    values: list[Any]
    mask: Any


class DecodeLoop:
    """The decode loop of one loaded model (`model`, `tokenizer`); `finish(new_ids, max_new_tokens, stop)` turns a
    row's tokens into its result ({"text", "finish_reason", "tokens"}), as the unbatched path reports it."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, finish: Callable[..., dict[str, Any]],
                 max_tokens: int, max_queue: int, max_rows: int = 64, device: str = "cpu",
                 context_error: Callable[[int, int], Exception | None] = lambda _p, _n: None) -> None:
        self.model, self.tokenizer, self.name, self.finish = model, tokenizer, name, finish
        self.context_error = context_error  # a prompt past the model's context is refused at submit
        self.max_tokens, self.max_queue, self.max_rows, self.device = max_tokens, max_queue, max_rows, device
        # The ids that end a text: the model's generation config may name several (as `generate` reads them).
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = sorted(set(eos if isinstance(eos, list | tuple) else [] if eos is None else [eos]))
        # A prefill needs the logits of each prompt's last position only (the LM head over every position of 16
        # prompts costs a quarter of the pass); models without the argument compute them all. An adapter version's
        # model (inference/adapters.py AdapterModel) is a callable without `forward`: its signature is read then.
        forward = getattr(model, "forward", model)
        self._last_logits = ({"logits_to_keep": 1}
                             if "logits_to_keep" in inspect.signature(forward).parameters else {})
        self._cond = threading.Condition()
        self._pending: deque[Request] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.reserved = 0  # positions reserved: rows x the longest row's prompt + max_new_tokens
        self.high_water = 0
        # The batch: its rows (in buffer order: row i in slot i); per layer keys and values [slots, heads,
        # capacity, dim]; the mask [slots, capacity]; each row's next position [slots, 1]. Slots past the rows
        # are free (rows that left).
        self._rows: list[Request] = []
        self._keys: list[Any] = []
        self._values: list[Any] = []
        self._mask: Any = None
        self._start = self._end = 0  # the window: the columns some row uses, the next token's column
        self._positions: Any = None
        self._turns = 0  # admission rounds (each followed by at most one decoding step): how long a request waited

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def kv_positions(self) -> int:
        """Positions the batch's KV buffer holds now (slots x capacity)."""
        keys = self._keys
        return int(keys[0].shape[0] * keys[0].shape[2]) if keys else 0

    def close(self, timeout: float = 30.0) -> None:
        """Stop: rows and waiting requests end as cancelled; the loop's thread is gone when this returns."""
        with self._cond:
            self._closed = True
            for request in [*self._pending, *self._rows]:
                request.cancel.set()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def submit(self, request: Request) -> Future[dict[str, Any]]:
        if not request.prompt:
            raise ValidationFailed("the prompt is empty (no tokens): give some text to continue")
        error = self.context_error(len(request.prompt), request.max_new_tokens)
        if error is not None:
            raise error
        with self._cond:
            if self._closed:
                raise CancelledRequest()
            if len(self._pending) >= self.max_queue:
                self._purge()  # requests given up while they waited do not hold places
            if len(self._pending) >= self.max_queue:
                metrics.REJECTED.labels(model=self.name, reason="queue_full").inc()
                raise RateLimited(f"model {self.name} has {len(self._pending)} generations waiting (limit "
                                  f"{self.max_queue}); retry later", retry_after=2)
            self._pending.append(request)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"decode-{self.name}", daemon=True)
                self._thread.start()
            self._cond.notify()
        return request.future

    def _purge(self) -> None:
        now = time.monotonic()
        for request in [r for r in self._pending if r.cancel.is_set() or (r.deadline or now + 1) < now]:
            self._pending.remove(request)
            _fail(request.future, CancelledRequest() if request.cancel.is_set() else self._late(request))

    def _late(self, request: Request) -> DeadlineExceeded:
        metrics.DROPPED.labels(model=self.name, reason="deadline").inc()
        return DeadlineExceeded(f"model {self.name} did not start this generation in time; the server is busy, "
                                "retry later")

    # -- the loop -------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the thread must not leave a caller waiting forever
            log.exception("the decode loop of %s stopped", self.name)
            with self._cond:
                left = [*self._rows, *self._pending]
                self._pending.clear()
                self._thread = None
            for request in left:
                self._end_row(request, error=RuntimeError(f"the decode loop stopped: {type(exc).__name__}"))
            self._drop_batch()
            raise

    def _loop(self) -> None:
        import torch

        while True:
            with self._cond:
                if not self._rows and not self._pending and not self._closed:
                    self._cond.wait(IDLE_SECONDS)
                if self._closed or (not self._rows and not self._pending):
                    for request in self._pending:
                        _fail(request.future, CancelledRequest())
                    self._pending.clear()
                    if not self._closed or not self._rows:
                        self._thread = None
                        self._drop_batch()  # a closed loop's buffers go now, not with the loop object
                        return
                admitted = self._admissible()
            with torch.inference_mode():
                if admitted:
                    self._prefill(admitted)
                if not self._rows:
                    continue
                try:
                    self._step()
                except Exception as exc:  # the shared forward failed: every row it held fails; the loop goes on
                    log.exception("decode step of %s failed", self.name)
                    metrics.BATCH_FAILURES.labels(model=self.name).inc()
                    for request in self._rows:
                        self._end_row(request, error=exc)
                    self._drop_batch()

    def _admissible(self, joining: list[Request] | None = None) -> list[Request]:
        """Waiting requests that fit: the KV buffer of the rows with them (rows x the longest reservation) within
        `max_tokens`, at most `max_rows` rows, at most `PREFILL_TOKENS` prompt tokens (one alone always fits an idle
        loop; one long prompt goes alone). Shorter first (SHORT_FIRST_RATIO): overdue requests in arrival order,
        then the others by max_new_tokens; a request still letting much shorter ones finish is passed over. The
        first one that does not fit ends the admission (nothing behind it overtakes it for room). With `joining`
        (the rows prefilled in this turn, not yet in the batch): the requests that arrived during that prefill,
        counting the room those rows take; an older request that could go first ends it (arrivals do not overtake
        it), and a prompt over the PREFILL_TOKENS budget waits for a turn of its own."""
        out: list[Request] = []
        self._purge()  # the given-up and the late leave wherever they wait, not only at the head
        arrived = joining is not None
        joining = joining or []
        if not arrived:
            self._turns += 1
        fresh = {r for r in self._pending if r.after is None}  # by identity (Request has eq=False)
        overdue: list[Request] = []
        rest: list[Request] = []
        for request in self._pending:
            # `after` ends up holding only requests still on (a new list: rows and waiting requests, none
            # finished), so an empty list means nothing holds it back.
            if request.after is None:  # first considered: the much shorter requests on now go first
                request.considered = self._turns
                request.after = [r for r in (*self._rows, *joining, *self._pending) if r is not request
                                 and r.max_new_tokens * SHORT_FIRST_RATIO <= request.max_new_tokens]
            elif request.after:  # those that finished (or failed, or were given up) no longer hold it back
                request.after = [r for r in request.after if not r.future.done()]
            late = (self._turns - request.considered) * SHORT_FIRST_RATIO >= request.max_new_tokens
            (overdue if late else rest).append(request)
        rest.sort(key=lambda r: r.max_new_tokens)  # stable: arrival order among equals
        longest = max((r.reserved for r in (*self._rows, *joining)), default=0)
        prompts = 0
        for index, head in enumerate([*overdue, *rest]):
            if index >= len(overdue) and head.after:
                continue  # much shorter requests are still on
            if arrived and head not in fresh:
                break  # an older request goes first: the next turn's
            rows = len(self._rows) + len(joining) + len(out) + 1
            if (out or arrived) and prompts + len(head.prompt) > PREFILL_TOKENS:
                break
            if (rows * max(longest, head.reserved) > self.max_tokens or rows > self.max_rows) \
                    and (self._rows or joining or out):
                break
            self._pending.remove(head)
            head.after = None  # the rows it let go first are not kept alive by it
            longest = max(longest, head.reserved)
            prompts += len(head.prompt)
            out.append(head)
        if out:
            self._account((len(self._rows) + len(joining) + len(out)) * longest)  # the buffer they will share
        return out

    def _account(self, positions: int) -> None:
        with self._cond:
            self.reserved = positions
            self.high_water = max(self.high_water, self.reserved)
        metrics.GENERATION_TOKENS_RESERVED.labels(model=self.name).set(self.reserved)
        metrics.GENERATION_TOKENS_RESERVED_MAX.labels(model=self.name).set(self.high_water)

    # -- prefill --------------------------------------------------------------------------------------------------
    def _prefill(self, requests: list[Request]) -> None:
        """The prompts' forward passes (grouped by length), giving each its first token and its cache; the rows
        that go on join the batch. Requests that arrived while these passes ran are prefilled right after them
        (once per turn, at most PREFILL_TOKENS more): a new request's first token waits for the prefill in flight,
        not for the layout and the decoding step after it as well. A pass that fails fails its own prompts only."""
        parts: list[_Part] = []
        ended: dict[Request, Ending] = {}
        self._prefill_passes(requests, parts, ended)
        with self._cond:
            arrived = self._admissible([r for part in parts for r in part.rows]) if self._pending else []
        self._prefill_passes(arrived, parts, ended)
        if parts:
            try:
                current = self._current()
                self._layout([*([current] if current else []), *parts])
            except Exception as exc:  # e.g. out of memory for the new buffer: the joining rows fail, the rest go on
                log.exception("%d rows could not join the batch of %s", sum(len(p.rows) for p in parts), self.name)
                metrics.BATCH_FAILURES.labels(model=self.name).inc()
                ended.update((request, exc) for part in parts for request in part.rows)
        self._account(self.kv_positions)
        self._end_rows(ended)  # after the accounting: a caller that has its result sees its tokens released

    def _prefill_passes(self, requests: list[Request], parts: list[_Part], ended: dict[Request, Ending]) -> None:
        for group in _passes(requests):
            try:
                part = self._prefill_pass(group, ended)
            except Exception as exc:
                log.exception("prefill of %d prompts for %s failed", len(group), self.name)
                metrics.BATCH_FAILURES.labels(model=self.name).inc()
                ended.update((request, exc) for request in group)
                continue
            if part is not None:
                parts.append(part)

    def _prefill_pass(self, requests: list[Request], ended: dict[Request, Ending]) -> _Part | None:
        """One forward pass over these prompts, left-padded; the rows that go on as a part, those that ended
        (after their first token) added to `ended`."""
        import torch

        for request in requests:
            if request.seed is not None and request.do_sample:
                request.generator = torch.Generator(device=self.device).manual_seed(request.seed)
        width = max(len(r.prompt) for r in requests)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in requests], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in requests],
                            dtype=torch.long, device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **self._last_logits)
        layers = _cache_of(out).layers
        done = self._advance(requests, out.logits[:, -1])
        ended.update(done)
        keep = [i for i, r in enumerate(requests) if r not in done]
        if not keep:
            return None
        if len(keep) == len(requests):
            return _Part(requests, [layer.keys for layer in layers], [layer.values for layer in layers], mask)
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        return _Part([requests[i] for i in keep], [layer.keys.index_select(0, index) for layer in layers],
                     [layer.values.index_select(0, index) for layer in layers], mask.index_select(0, index))

    # -- the batch's buffer ---------------------------------------------------------------------------------------
    def _current(self) -> _Part | None:
        """The running rows as a part: views of the buffer's window (the columns some row uses)."""
        if not self._rows:
            return None
        n, start, end = len(self._rows), self._start, self._end
        return _Part(list(self._rows), [k[:n, :, start:end] for k in self._keys],
                     [v[:n, :, start:end] for v in self._values], self._mask[:n, start:end])

    def _layout(self, parts: list[_Part]) -> None:
        """A new buffer for these rows: capacity = the longest reservation among them; each part's tokens copied
        so that every row ends at one column, without the columns that are padding in every row."""
        import torch

        rows = [r for part in parts for r in part.rows]
        if not rows:
            self._drop_batch()
            return
        spans = [int(part.mask.sum(dim=1).max()) for part in parts]  # each part's widest row
        width = max(spans)
        capacity = max(r.reserved for r in rows)  # every running row has a token still to feed: width < capacity
        count = len(rows)
        keys, values = [], []
        for layer in range(len(parts[0].keys)):
            sample_k, sample_v = parts[0].keys[layer], parts[0].values[layer]
            k = torch.empty((count, sample_k.shape[1], capacity, sample_k.shape[3]), dtype=sample_k.dtype,
                            device=sample_k.device)
            v = torch.empty((count, sample_v.shape[1], capacity, sample_v.shape[3]), dtype=sample_v.dtype,
                            device=sample_v.device)
            at = 0
            for part, span in zip(parts, spans, strict=True):
                n = len(part.rows)
                # Columns left of a row's tokens are masked, but must hold numbers: 0 x NaN is NaN in attention.
                k[at:at + n, :, :width - span].zero_()
                v[at:at + n, :, :width - span].zero_()
                k[at:at + n, :, width - span:width] = part.keys[layer][:, :, -span:]
                v[at:at + n, :, width - span:width] = part.values[layer][:, :, -span:]
                at += n
            keys.append(k)
            values.append(v)
        mask = torch.zeros((count, capacity), dtype=torch.long, device=keys[0].device)
        at = 0
        for part, span in zip(parts, spans, strict=True):
            mask[at:at + len(part.rows), width - span:width] = part.mask[:, -span:]
            at += len(part.rows)
        self._rows, self._keys, self._values, self._mask = rows, keys, values, mask
        self._start, self._end = 0, width
        self._positions = mask.sum(dim=1, keepdim=True)  # each row's next position: its tokens so far

    def _leave(self, ended: dict[Request, Ending]) -> None:
        """The ended rows leave the buffer in place: the last running rows move into their slots (one row's window
        copied per slot), and the window starts where the longest row left now starts. The buffer keeps its
        size until rows join (then it is laid out anew for them)."""
        rows = self._rows
        if all(r in ended for r in rows):
            self._drop_batch()
            return
        count = sum(1 for r in rows if r not in ended)
        holes = [i for i in range(count) if rows[i] in ended]
        movers = [i for i in range(count, len(rows)) if rows[i] not in ended]
        start, end = self._start, self._end
        for hole, mover in zip(holes, movers, strict=True):
            for k, v in zip(self._keys, self._values, strict=True):
                k[hole, :, start:end] = k[mover, :, start:end]
                v[hole, :, start:end] = v[mover, :, start:end]
            self._mask[hole, start:end] = self._mask[mover, start:end]
            self._positions[hole] = self._positions[mover]
            rows[hole] = rows[mover]
        del rows[count:]
        # A row's tokens so far are its next position: the longest row's start is the window's.
        self._start = end - int(self._positions[:count].max())

    def _drop_batch(self) -> None:
        self._rows, self._keys, self._values, self._mask, self._positions = [], [], [], None, None
        self._start = self._end = 0

    # -- one step -------------------------------------------------------------------------------------------------
    def _step(self) -> None:
        import torch
        from transformers.cache_utils import Cache

        if self._end == self._mask.shape[1]:  # no free column: lay the rows out again without the padding columns
            current = self._current()
            assert current is not None
            self._layout([current])
        rows, start, end = self._rows, self._start, self._end
        n = len(rows)
        last = torch.tensor([[r.new[-1]] for r in rows], device=self.device)
        mask = self._mask[:n]
        mask[:, end] = 1
        # The window's columns only: the token goes in column `end`, attention reads from `start`.
        cache = Cache(layers=[_column_layer()(k[:n, :, start:], v[:n, :, start:], end - start)
                              for k, v in zip(self._keys, self._values, strict=True)])
        out = self.model(input_ids=last, attention_mask=mask[:, start:end + 1], position_ids=self._positions[:n],
                         cache=cache, use_cache=True)
        self._end = end + 1
        self._positions[:n] += 1
        metrics.BATCH_SIZE.labels(model=self.name).observe(n)
        ended = self._advance(rows, out.logits[:, -1])
        if ended:
            self._leave(ended)
            self._account(self.kv_positions)
            self._end_rows(ended)

    # -- picking tokens -------------------------------------------------------------------------------------------
    def _advance(self, rows: list[Request], logits: Any) -> dict[Request, Ending]:
        """Each row's next token from its row of `logits` [rows, vocab], appended; the rows that ended (done,
        cancelled, or failed alone: see `_end_rows`). Greedy rows share one argmax; the others pick alone, as
        `generate` would."""
        import torch

        scores = logits.float()
        early = [i for i, r in enumerate(rows) if len(r.new) < r.min_new_tokens]
        if early and self.eos_ids:  # EOS cannot end a row before its min_new_tokens
            scores[torch.tensor(early, device=scores.device).unsqueeze(1),
                   torch.tensor(self.eos_ids, device=scores.device)] = -float("inf")
        greedy = scores.argmax(dim=-1).tolist() if any(r.plain for r in rows) else []
        ended: dict[Request, Ending] = {}
        for i, request in enumerate(rows):
            try:
                token = greedy[i] if request.plain else self._pick(request, scores[i:i + 1])
                ending = self._append(request, token)
            except Exception as exc:  # e.g. sampling from NaN scores: this row fails, its batch-mates go on
                log.exception("generation of one row on %s failed", self.name)
                ending = exc
            if ending is not None:
                ended[request] = ending
        return ended

    def _pick(self, request: Request, scores: Any) -> int:
        """A sampled or penalized row's next token from its scores [1, vocab] (EOS already masked before
        min_new_tokens), with its own settings, as `generate` would pick it for this row alone."""
        import torch

        ids = torch.tensor([request.prompt + request.new], device=scores.device)
        if request.repetition_penalty != 1.0:
            picked = torch.gather(scores, 1, ids)
            picked = torch.where(picked < 0, picked * request.repetition_penalty, picked / request.repetition_penalty)
            scores = scores.scatter(1, ids, picked)
        if not request.do_sample:
            return int(scores.argmax(dim=-1))
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        if request.temperature != 1.0:
            scores = TemperatureLogitsWarper(request.temperature)(ids, scores)
        if request.top_k:
            scores = TopKLogitsWarper(request.top_k)(ids, scores)
        if request.top_p < 1.0:
            scores = TopPLogitsWarper(request.top_p)(ids, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=request.generator))

    def _append(self, request: Request, token: int) -> Ending:
        """Append the token and hand on new text; how the row ends ("done", "cancelled"), or None: it goes on."""
        request.new.append(token)
        text = None
        if request.on_text is not None or request.stop:
            text = self.tokenizer.decode(request.new, skip_special_tokens=True)
        if request.cancel.is_set():
            return "cancelled"
        if (token in self.eos_ids and len(request.new) >= max(1, request.min_new_tokens)) \
                or len(request.new) >= request.max_new_tokens \
                or (text is not None and bool(request.stop) and any(s in text for s in request.stop or [])):
            return "done"
        # Text that ends in a replacement character is a multi-byte character cut in half: sent with the next token.
        if request.on_text is not None and text is not None and not text.endswith("\ufffd") \
                and len(text) > request.sent:
            request.on_text(text[request.sent:])
            request.sent = len(text)
        return None

    def _end_rows(self, ended: dict[Request, Ending]) -> None:
        for request, ending in ended.items():
            if isinstance(ending, BaseException):
                self._end_row(request, error=ending)
            else:
                self._end_row(request, reason=ending)

    def _end_row(self, request: Request, *, reason: str | None = None, error: BaseException | None = None) -> None:
        if request.future.done():
            return
        if error is not None:
            _fail(request.future, error)
            return
        try:
            result = self.finish(request.new, max_new_tokens=request.max_new_tokens, stop=request.stop)
        except Exception as exc:
            _fail(request.future, exc)
            return
        if reason == "cancelled":
            result["finish_reason"] = "cancelled"
        if not request.future.done():
            request.future.set_result(result)


def _passes(requests: list[Request]) -> list[list[Request]]:
    """The prefill forward passes for these prompts: sorted by length and cut where the padding saved is worth
    more than one more pass (PREFILL_PASS_TOKENS), at most PREFILL_BATCH prompts each; the fewest padded tokens
    plus passes, found exactly (a few dozen prompts at most)."""
    order = sorted(requests, key=lambda r: len(r.prompt))
    count = len(order)
    best = [0] + [float("inf")] * count
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        for start in range(max(0, end - PREFILL_BATCH), end):
            cost = best[start] + PREFILL_PASS_TOKENS + (end - start) * len(order[end - 1].prompt)
            if cost < best[end]:
                best[end], cut[end] = cost, start
    passes: list[list[Request]] = []
    end = count
    while end:
        passes.append(order[cut[end]:end])
        end = cut[end]
    return passes[::-1]


def _fail(future: Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class CancelledRequest(Exception):
    """A request whose caller went away before it was admitted."""


def _cache_of(out: Any) -> Any:
    """The KV cache a forward pass returned (`cache` in transformers 5.24+, `past_key_values` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@functools.cache
def _column_layer() -> type:
    """The cache layer class for decoding steps (made on first use: this module does not import torch or
    transformers when it is imported)."""
    from transformers.cache_utils import DynamicLayer

    class ColumnLayer(DynamicLayer):
        """One layer of the batch's cache for one step: the new keys and values are written into column `end` of
        the preallocated buffers, and attention reads the columns up to it (views, no copy)."""

        def __init__(self, keys: Any, values: Any, end: int) -> None:
            super().__init__()
            self.buffer_keys, self.buffer_values, self.end = keys, values, end
            self.keys, self.values = keys[:, :, :end], values[:, :, :end]
            self.is_initialized = True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            stop = self.end + key_states.shape[-2]
            self.buffer_keys[:, :, self.end:stop] = key_states
            self.buffer_values[:, :, self.end:stop] = value_states
            self.end = stop
            self.keys, self.values = self.buffer_keys[:, :, :stop], self.buffer_values[:, :, :stop]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.end

    return ColumnLayer
