"""Continuous batching for causal-LM generation: one decode loop per loaded model, scheduled per decoding step.

A request is prefilled (its prompt's forward pass, shared with the requests admitted at the same step, gives
its first token and its KV cache) and joins the running batch at the next step: the batch's caches are
left-padded to a common length, with an attention mask and positions counted per row from its own first token,
so each row computes what it would alone. Every step
runs one forward pass over all rows and picks each row's next token with that row's own settings (greedy, or
sampling with the row's own seeded generator, so a seed's text depends on nothing else). A row leaves at once
when it ends (EOS after `min_new_tokens`, a stop string, `max_new_tokens`, or its caller gone) and frees its
share of the token budget: prompt + `max_new_tokens` of every admitted request, reserved at admission and
bounded by `max_tokens`; beyond it requests wait in arrival order, and a full wait queue is a 429.

Streamed requests are rows like any other: their text is handed on as each token is decoded.
"""

from __future__ import annotations

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
PREFILL_BATCH = 16  # requests admitted together are prefilled in forward passes of at most this many prompts


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
    holding: bool = False  # its tokens are reserved in the loop's budget
    deadline: float | None = None  # monotonic: not admitted by then, it fails with DeadlineExceeded

    @property
    def reserved(self) -> int:
        return len(self.prompt) + self.max_new_tokens


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
        self.eos_ids = frozenset(eos if isinstance(eos, list | tuple) else [] if eos is None else [eos])
        self._cond = threading.Condition()
        self._pending: deque[Request] = deque()
        self._thread: threading.Thread | None = None
        self.reserved = 0  # tokens reserved by the running rows
        self.high_water = 0
        # The batch: rows, per layer keys and values [rows, heads, positions, dim], the mask [rows, positions].
        self._closed = False
        self._rows: list[Request] = []
        self._keys: list[Any] = []
        self._values: list[Any] = []
        self._mask: Any = None

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def close(self, timeout: float = 30.0) -> None:
        """Stop: rows and waiting requests end as cancelled; the loop's thread is gone when this returns."""
        with self._cond:
            self._closed = True
            for request in [*self._pending, *self._rows]:
                request.cancel.set()
            self._cond.notify()
            thread = self._thread
        if thread is not None:
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
                self._end(request, error=RuntimeError(f"the decode loop stopped: {type(exc).__name__}"))
            self._rows, self._keys, self._values, self._mask = [], [], [], None
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
                        return
                admitted = self._admissible()
            with torch.inference_mode():
                for first in range(0, len(admitted), PREFILL_BATCH):
                    chunk = admitted[first:first + PREFILL_BATCH]
                    try:
                        self._prefill(chunk)
                    except Exception as exc:  # fails these prompts only; the running rows go on
                        log.exception("prefill of %d prompts for %s failed", len(chunk), self.name)
                        metrics.BATCH_FAILURES.labels(model=self.name).inc()
                        for request in chunk:
                            if request not in self._rows:
                                self._end(request, error=exc)
                if not self._rows:
                    continue
                try:
                    self._step()
                except Exception as exc:  # the shared forward failed: every row it held fails; the loop goes on
                    log.exception("decode step of %s failed", self.name)
                    metrics.BATCH_FAILURES.labels(model=self.name).inc()
                    for request in self._rows:
                        self._end(request, error=exc)
                    self._rows, self._keys, self._values, self._mask = [], [], [], None

    def _admissible(self) -> list[Request]:
        """Waiting requests that fit the token budget, in arrival order (one alone always fits an idle loop)."""
        out: list[Request] = []
        self._purge()  # the given-up and the late leave wherever they wait, not only at the head
        now = time.monotonic()
        while self._pending:
            head = self._pending[0]
            if head.cancel.is_set() or (head.deadline is not None and head.deadline < now):
                self._pending.popleft()
                _fail(head.future, CancelledRequest() if head.cancel.is_set() else self._late(head))
                continue
            if (self.reserved + head.reserved > self.max_tokens or len(self._rows) + len(out) >= self.max_rows) \
                    and (self._rows or out):
                break
            self._pending.popleft()
            self.reserved += head.reserved
            head.holding = True
            self.high_water = max(self.high_water, self.reserved)
            metrics.GENERATION_TOKENS_RESERVED.labels(model=self.name).set(self.reserved)
            metrics.GENERATION_TOKENS_RESERVED_MAX.labels(model=self.name).set(self.high_water)
            out.append(head)
        return out

    def _prefill(self, requests: list[Request]) -> None:
        """The prompts' forward pass, together (left-padded, positions per row), giving each its first token
        and its cache; the rows that go on join the batch."""
        import torch

        for request in requests:
            if request.seed is not None and request.do_sample:
                request.generator = torch.Generator(device=self.device).manual_seed(request.seed)
        width = max(len(r.prompt) for r in requests)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in requests], device=self.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in requests],
                            dtype=torch.long, device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        layers = _cache_of(out).layers
        logits = out.logits[:, -1]
        keep = [i for i, r in enumerate(requests) if not self._advance(r, logits[i])]
        if not keep:
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        keys = [layer.keys.index_select(0, index) for layer in layers]
        values = [layer.values.index_select(0, index) for layer in layers]
        mask = mask.index_select(0, index)
        if self._rows:
            span = max(self._mask.shape[1], width)
            keys = [torch.cat([_left_pad(a, span), _left_pad(b, span)]) for a, b in zip(self._keys, keys, strict=True)]
            values = [torch.cat([_left_pad(a, span), _left_pad(b, span)])
                      for a, b in zip(self._values, values, strict=True)]
            mask = torch.cat([_left_pad(self._mask, span, dim=1), _left_pad(mask, span, dim=1)])
        self._keys, self._values, self._mask = keys, values, mask
        self._rows.extend(requests[i] for i in keep)

    def _step(self) -> None:
        import torch
        from transformers import DynamicCache

        rows = self._rows
        last = torch.tensor([[r.new[-1]] for r in rows], device=self.device)
        positions = self._mask.sum(dim=1, keepdim=True)  # each row's next position: its real tokens so far
        mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long, device=self.device)], dim=1)
        cache = DynamicCache(ddp_cache_data=list(zip(self._keys, self._values, strict=True)))
        out = self.model(input_ids=last, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        layers = _cache_of(out).layers
        self._keys = [layer.keys for layer in layers]
        self._values = [layer.values for layer in layers]
        self._mask = mask
        metrics.BATCH_SIZE.labels(model=self.name).observe(len(rows))
        logits = out.logits[:, -1]
        keep = [i for i, request in enumerate(rows) if not self._advance(request, logits[i])]
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            self._rows = [rows[i] for i in keep]
            self._keys = [k.index_select(0, index) for k in self._keys]
            self._values = [v.index_select(0, index) for v in self._values]
            self._mask = self._mask.index_select(0, index)
            if keep:  # drop the columns that are padding in every row left
                first = int((self._mask.cumsum(dim=1) == 0).sum(dim=1).min())
                if first:
                    self._keys = [k[:, :, first:] for k in self._keys]
                    self._values = [v[:, :, first:] for v in self._values]
                    self._mask = self._mask[:, first:]

    # -- one row --------------------------------------------------------------------------------------------------
    def _advance(self, request: Request, logits: Any) -> bool:
        """Pick and append the row's next token; True when the row ended (done, cancelled, or failed alone)."""
        try:
            return self._try_finish(request, self._pick(request, logits))
        except Exception as exc:  # e.g. sampling from NaN scores: this row fails, its batch-mates go on
            log.exception("generation of one row on %s failed", self.name)
            self._end(request, error=exc)
            return True

    def _pick(self, request: Request, logits: Any) -> int:
        """The row's next token from its logits, with its own settings (as `generate` would, one row)."""
        import torch

        scores = logits.float().unsqueeze(0)
        if request.repetition_penalty != 1.0:
            seen = torch.tensor([request.prompt + request.new], device=scores.device)
            picked = torch.gather(scores, 1, seen)
            picked = torch.where(picked < 0, picked * request.repetition_penalty, picked / request.repetition_penalty)
            scores = scores.scatter(1, seen, picked)
        if len(request.new) < request.min_new_tokens:
            for eos in self.eos_ids:
                scores[:, eos] = -float("inf")
        if not request.do_sample:
            return int(scores.argmax(dim=-1))
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        ids = torch.tensor([request.prompt + request.new], device=scores.device)
        if request.temperature != 1.0:
            scores = TemperatureLogitsWarper(request.temperature)(ids, scores)
        if request.top_k:
            scores = TopKLogitsWarper(request.top_k)(ids, scores)
        if request.top_p < 1.0:
            scores = TopPLogitsWarper(request.top_p)(ids, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=request.generator))

    def _try_finish(self, request: Request, token: int) -> bool:
        """Append the token; hand on new text; end the row if it is done. True when it ended."""
        request.new.append(token)
        text = None
        if request.on_text is not None or request.stop:
            text = self.tokenizer.decode(request.new, skip_special_tokens=True)
        if request.cancel.is_set():
            self._end(request, reason="cancelled")
            return True
        done = (token in self.eos_ids and len(request.new) >= max(1, request.min_new_tokens)) \
            or len(request.new) >= request.max_new_tokens \
            or (text is not None and bool(request.stop) and any(s in text for s in request.stop or []))
        if done:
            self._end(request)
            return True
        # Text that ends in a replacement character is a multi-byte character cut in half: sent with the next token.
        if request.on_text is not None and text is not None and not text.endswith("\ufffd") \
                and len(text) > request.sent:
            request.on_text(text[request.sent:])
            request.sent = len(text)
        return False

    def _end(self, request: Request, *, reason: str | None = None, error: BaseException | None = None) -> None:
        if request.holding:
            with self._cond:
                self.reserved -= request.reserved
                request.holding = False
                metrics.GENERATION_TOKENS_RESERVED.labels(model=self.name).set(self.reserved)
                self._cond.notify()
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


def _fail(future: Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class CancelledRequest(Exception):
    """A request whose caller went away before it was admitted."""


def _cache_of(out: Any) -> Any:
    """The KV cache a forward pass returned (`cache` in transformers 5.24+, `past_key_values` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _left_pad(tensor: Any, length: int, *, dim: int = 2) -> Any:
    """`tensor` padded with zeros at the front of `dim` to `length`."""
    import torch

    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)
