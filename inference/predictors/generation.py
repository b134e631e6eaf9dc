"""Causal-LM generation: prompts in, {"text", "finish_reason", "tokens"} out (`text` excludes the prompt).

This is the path of `FTSERVE_CONTINUOUS_BATCHING=false` (one `generate` call per batch) and of the unbatched
streams there; the continuous decode loop (inference/decode.py) reuses this predictor's model, tokenizer,
`_finish` and `context_error`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from core.errors import ValidationFailed
from inference.predictors.base import Encoded, Predictor, adapter_rows, capped


class _StopOn:
    """Stops generation once the decoded new text contains a stop sequence."""

    def __init__(self, tokenizer: Any, prompt_len: int, stops: list[str]) -> None:
        self.tokenizer, self.prompt_len, self.stops = tokenizer, prompt_len, stops

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([any(stop in text for stop in self.stops) for text in texts], dtype=torch.bool,
                            device=input_ids.device)


class _RowBudgets:
    """Stops each row of a batched `generate` at its own `max_new_tokens` (the call runs to the largest)."""

    def __init__(self, prompt_len: int, budgets: list[int]) -> None:
        self.prompt_len, self.budgets = prompt_len, budgets

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        made = input_ids.shape[1] - self.prompt_len
        return torch.tensor([made >= budget for budget in self.budgets], dtype=torch.bool, device=input_ids.device)


class _StopWhenSet:
    """Stops `generate` at the next token once the event is set (the streaming client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


# Sampling draws from torch's process-wide generator: a seeded generation holds this lock from its
# `manual_seed` to its last token, and every other sampled generation (any model, any thread) waits, so
# nothing else draws from the generator in between and a seed's text depends on nothing else.
_SAMPLING_LOCK = threading.Lock()


def _sampling(do_sample: bool) -> AbstractContextManager[Any]:
    return _SAMPLING_LOCK if do_sample else nullcontext()


class GenerationPredictor(Predictor):
    """Prompts in, {"text", "finish_reason", "tokens"} out. `text` excludes the prompt."""

    task = "generation"
    # Each prompt carries its own max_new_tokens: requests that differ only there share a batch.
    input_params = frozenset({"max_new_tokens"})

    def __init__(self, model_dir: Path, *, device: str = "cpu", model: Any = None, tokenizer: Any = None
                 ) -> None:
        from training.modeling import ensure_pad_token

        super().__init__(model_dir, device=device, model=model, tokenizer=tokenizer)
        ensure_pad_token(self.tokenizer)

    @classmethod
    def imported_serving(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {"block_size": capped(1024, config)}

    def encode(self, inputs: Sequence[str], *, max_new_tokens: int = 64, **params: Any) -> list[Encoded]:
        """Each prompt's token ids, with its `max_new_tokens` (`meta`); a prompt whose tokens and max_new_tokens pass
        the model's context is a ValidationFailed."""
        out = []
        for ids in self.tokenizer(list(inputs))["input_ids"]:
            error = self.context_error(len(ids), max_new_tokens)
            if error is not None:
                raise error
            out.append(Encoded([{"input_ids": list(ids)}], max_new_tokens))
        return out

    @classmethod
    def padded_tokens(cls, encoded: Sequence[Encoded], **params: Any) -> int:
        """One left-padded `generate` call: every row holds the longest prompt and the largest max_new_tokens."""
        if not encoded:
            return 0
        return len(encoded) * (max(item.lengths[0] for item in encoded) + max(item.meta for item in encoded))

    def predict(self, encoded: Sequence[Encoded], **params: Any) -> list[Any]:
        """Prompts share one `generate` call, left-padded with an attention mask (positions counted from each
        prompt's first real token), so each text is the one an unbatched call gives. Each prompt has its own
        `max_new_tokens`: the call runs to the largest and each row stops at its own (a stopping criterion per
        row), so requests of different lengths share a call too. Two exceptions: with a repetition penalty, prompts
        of one token length share a call (the penalty would count a padded row's pad tokens), and seeded sampling
        runs prompt by prompt, so a seed's text never depends on its batch-mates."""
        ids = [item.rows[0]["input_ids"] for item in encoded]
        budgets: list[int] = [item.meta for item in encoded]
        if params.get("do_sample") and params.get("seed") is not None:
            return [self.by(item)._one(row, max_new_tokens=n, **params)
                    for item, row, n in zip(encoded, ids, budgets, strict=True)]
        adapters = adapter_rows(encoded, range(len(encoded)))  # one row per prompt
        out: list[Any] = [{}] * len(encoded)
        groups: dict[int, list[int]] = {}
        exact = float(params.get("repetition_penalty", 1.0)) != 1.0
        for index, row in enumerate(ids):
            groups.setdefault(len(row) if exact else 0, []).append(index)
        for indices in groups.values():
            results = self._padded([ids[i] for i in indices], [budgets[i] for i in indices],
                                   adapters=None if adapters is None else [adapters[i] for i in indices], **params)
            for index, result in zip(indices, results, strict=True):
                out[index] = result
        return out

    def _kwargs(self, *, max_new_tokens: int, min_new_tokens: int, do_sample: bool, temperature: float,
                top_p: float, top_k: int, repetition_penalty: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens, "do_sample": do_sample,
            "repetition_penalty": repetition_penalty, "pad_token_id": self.tokenizer.pad_token_id,
        }
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
        return kwargs

    def _finish(self, new: list[int], *, max_new_tokens: int, stop: list[str] | None) -> dict[str, Any]:
        """Text, finish reason and token count of one row's new tokens, as an unbatched call reports them."""
        eos = self.tokenizer.eos_token_id
        if eos in new:  # in a batch, a finished row is padded (with EOS for GPT-2): cut after its first EOS
            new = new[: new.index(eos) + 1]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if stop and any(s in text for s in stop):
            # A row stopped by a stop sequence ends at the token that completed it.
            end = next(e for e in range(1, len(new) + 1)
                       if any(s in self.tokenizer.decode(new[:e], skip_special_tokens=True) for s in stop))
            new = new[:end]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "length"
        cut = min((text.find(s) for s in stop or [] if s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        elif new and new[-1] == eos and len(new) < max_new_tokens:
            finish = "eos"
        return {"text": text, "finish_reason": finish, "tokens": len(new)}

    def _padded(self, rows: list[list[int]], budgets: list[int], *, adapters: list[str] | None = None,
                min_new_tokens: int = 0,
                do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 50,
                repetition_penalty: float = 1.0, seed: int | None = None, stop: list[str] | None = None
                ) -> list[dict[str, Any]]:
        import torch
        from transformers import StoppingCriteriaList

        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=self.device)
        kwargs = self._kwargs(max_new_tokens=max(budgets), min_new_tokens=min_new_tokens, do_sample=do_sample,
                              temperature=temperature, top_p=top_p, top_k=top_k,
                              repetition_penalty=repetition_penalty)
        criteria = StoppingCriteriaList()
        if stop:
            criteria.append(_StopOn(self.tokenizer, width, stop))
        if len(set(budgets)) > 1:
            criteria.append(_RowBudgets(width, budgets))
        if criteria:
            kwargs["stopping_criteria"] = criteria
        if adapters is not None:  # prompts for several adapters of one shared base: each row its own
            kwargs["adapter_names"] = adapters
        with _sampling(do_sample), torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        return [self._finish(row.tolist()[:budget], max_new_tokens=budget, stop=stop)
                for row, budget in zip(out[:, width:], budgets, strict=True)]

    def _one(
        self,
        prompt: str | list[int],
        *,
        max_new_tokens: int = 64,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 50,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        streamer: Any = None,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        import torch
        from transformers import StoppingCriteriaList

        ids = list(self.tokenizer(prompt)["input_ids"]) if isinstance(prompt, str) else prompt
        enc = {"input_ids": torch.tensor([ids], device=self.device),
               "attention_mask": torch.ones((1, len(ids)), dtype=torch.long, device=self.device)}
        prompt_len = len(ids)
        kwargs = self._kwargs(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample,
                              temperature=temperature, top_p=top_p, top_k=top_k,
                              repetition_penalty=repetition_penalty)
        if streamer is not None:
            kwargs["streamer"] = streamer
        criteria = StoppingCriteriaList()
        if stop:
            criteria.append(_StopOn(self.tokenizer, prompt_len, stop))
        if cancel is not None:
            criteria.append(_StopWhenSet(cancel))
        if criteria:
            kwargs["stopping_criteria"] = criteria
        with _sampling(do_sample), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)  # per request: the text does not depend on other requests
            out = self.model.generate(**enc, **kwargs)
        result = self._finish(out[0, prompt_len:].tolist(), max_new_tokens=max_new_tokens, stop=stop)
        if cancel is not None and cancel.is_set() and result["finish_reason"] == "length":
            result["finish_reason"] = "cancelled"
        return result

    def context(self) -> int | None:
        """How many positions the model has (prompt + new tokens), when its config says."""
        config = self.model.config
        limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        return int(limit) if limit else None

    def context_error(self, prompt_tokens: int, max_new_tokens: int) -> ValidationFailed | None:
        """Past its context a model indexes beyond its position table (an IndexError on the CPU, a device assert
        on a GPU): such a request is the caller's to fix."""
        limit = self.context()
        if limit is None or prompt_tokens + max_new_tokens <= limit:
            return None
        return ValidationFailed(
            f"the prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: together "
            f"{prompt_tokens + max_new_tokens}, more than the model's context of {limit} tokens; shorten the prompt "
            "or lower max_new_tokens")

    def check_prompts(self, prompts: list[str], *, max_new_tokens: int) -> None:
        for prompt in prompts:
            error = self.context_error(len(self.tokenizer(prompt)["input_ids"]), max_new_tokens)
            if error is not None:
                raise error

    def stream_into(self, prompt: str, sink: Any, *, on_cancel: Callable[[int], None] | None = None,
                    **params: Any) -> None:
        """Generate one prompt, handing decoded text to `sink.text` as tokens come and the result to
        `sink.finish`; `sink.cancel` stops it at the next token (and `on_cancel` gets the tokens made so far)."""
        from transformers import TextStreamer

        class _ToSink(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    sink.text(text)

        sink.start()
        streamer = _ToSink(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result = self._one(prompt, streamer=streamer,
                           cancel=sink.cancel, **params)
        if result["finish_reason"] == "cancelled" and on_cancel is not None:
            on_cancel(int(result["tokens"]))
        sink.finish(result)
