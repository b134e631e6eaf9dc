"""`"auto"` hyperparameters: epochs, learning rate, batch size and warm-up chosen from the run itself.

A job that leaves `epochs`, `learning_rate`, `batch_size` or `warmup_steps` unset (or `"auto"`) gets them here, at
its first attempt, once the training set is tokenized: the choice reads the task, the number of training
examples (QA windows and LM blocks, not rows), the size of the model and the method (full or LoRA). The worker
writes the values into the job's `hyperparameters`, so later attempts reuse them, and the event says why.

The figures are in bench/RESULTS.md (Quality, "jobs with no hyperparameters"); `bench/quality.py
--defaults` measures them against the fixed defaults they replaced (3 epochs, lr 5e-5, batch 16, no warm-up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

AUTO = "auto"
AUTO_FIELDS = ("epochs", "learning_rate", "batch_size", "warmup_steps")

# Epochs: enough passes that a small set is seen at least MIN_EXAMPLES_SEEN times in all (a QA head or a
# classifier trained for ~60 updates has barely left its initialization), never more than MAX_EPOCHS; large sets
# get fewer passes.
DEFAULT_EPOCHS = 3
MIN_EXAMPLES_SEEN = 4_000
MAX_EPOCHS = 10
LARGE_SETS = ((100_000, 1), (30_000, 2))  # at least this many examples → this many epochs

SMALL_SET = 256  # fewer training examples than this train with batches of SMALL_BATCH
DEFAULT_BATCH = 16
SMALL_BATCH = 8

WARMUP_FRACTION = 0.1

# Full fine-tune learning rate by model size (parameters): small models take larger steps.
FULL_LR = ((10e6, 3e-4), (50e6, 1e-4), (200e6, 5e-5), (1e9, 3e-5))
LARGEST_FULL_LR = 1e-5
# A LoRA adapter trains a few fresh low-rank matrices (and the task head): ten times the full rate, in
# [LORA_LR_MIN, LORA_LR_MAX] (peft's examples use 1e-4..1e-3).
LORA_LR_FACTOR = 10
LORA_LR_MIN = 2e-4
LORA_LR_MAX = 1e-3


@dataclass
class Choice:
    values: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def message(self) -> str:
        return "hyperparameters chosen (auto): " + "; ".join(
            f"{name} {_show(self.values[name])} ({self.reasons[name]})" for name in AUTO_FIELDS if name in self.values)


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def is_auto(value: Any) -> bool:
    return value is None or value == AUTO


def full_learning_rate(n_parameters: int) -> float:
    for below, lr in FULL_LR:
        if n_parameters < below:
            return lr
    return LARGEST_FULL_LR


def choose(
    given: dict[str, Any],
    *,
    n_examples: int,
    n_parameters: int,
    lora: bool,
    gradient_accumulation_steps: int = 1,
    max_steps: int | None = None,
) -> Choice:
    """Values (and reasons) for the fields of `given` that are auto; the others are left alone.

    `n_examples`: training examples after tokenization (a QA context longer than max_length is several windows, a
    generation corpus is packed into blocks); `n_parameters`: the model's, before any adapter."""
    choice = Choice()
    batch = given.get("batch_size")
    if is_auto(batch):
        batch = SMALL_BATCH if n_examples < SMALL_SET else DEFAULT_BATCH
        choice.values["batch_size"] = batch
        choice.reasons["batch_size"] = (
            f"{n_examples} training examples, under {SMALL_SET}: smaller batches give more updates"
            if batch == SMALL_BATCH else f"{n_examples} training examples")
    epochs = given.get("epochs")
    if is_auto(epochs):
        epochs, why = _epochs(n_examples)
        choice.values["epochs"] = epochs
        choice.reasons["epochs"] = why + ("; max_steps overrides it" if max_steps else "")
    lr = given.get("learning_rate")
    if is_auto(lr):
        full = full_learning_rate(n_parameters)
        if lora:
            lr = min(LORA_LR_MAX, max(LORA_LR_MIN, full * LORA_LR_FACTOR))
            why = (f"LoRA adapter on a {_millions(n_parameters)}-parameter model: {LORA_LR_FACTOR}x the full "
                   f"fine-tune rate {full:g}, kept in {LORA_LR_MIN:g}..{LORA_LR_MAX:g}")
        else:
            lr = full
            why = f"full fine-tune of a {_millions(n_parameters)}-parameter model"
        choice.values["learning_rate"] = lr
        choice.reasons["learning_rate"] = why
    if is_auto(given.get("warmup_steps")):
        per_epoch = max(1, math.ceil(n_examples / (int(batch) * gradient_accumulation_steps)))
        total = max_steps or max(1, math.ceil(per_epoch * float(epochs)))
        choice.values["warmup_steps"] = max(0, round(total * WARMUP_FRACTION))
        choice.reasons["warmup_steps"] = f"{WARMUP_FRACTION:.0%} of {total} optimizer steps"
    return choice


def _epochs(n_examples: int) -> tuple[int, str]:
    for at_least, epochs in LARGE_SETS:
        if n_examples >= at_least:
            return epochs, f"{n_examples} training examples, at least {at_least}"
    if n_examples * DEFAULT_EPOCHS >= MIN_EXAMPLES_SEEN:
        return DEFAULT_EPOCHS, f"{n_examples} training examples"
    epochs = min(MAX_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / max(1, n_examples)))
    capped = " (capped)" if epochs == MAX_EPOCHS and n_examples * MAX_EPOCHS < MIN_EXAMPLES_SEEN else ""
    return epochs, f"{n_examples} training examples: {MIN_EXAMPLES_SEEN} examples seen in all{capped}"
