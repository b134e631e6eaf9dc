"""Length-aware sub-batches for serving forwards.

A batch padded to its longest input computes `len(batch) × longest` tokens. With short, uneven texts (a
classification request mix averages ~25 tokens with a long tail) that is about twice the real tokens, which
eats the gain of batching. Sorting by length and cutting the sorted run where padding would waste more than
`max_waste` keeps almost all of the batching gain and little of the padding; a group may waste more only while
it stays under `min_tokens` padded tokens (too small to be worth a forward of its own).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any


def length_groups(lengths: Sequence[int], *, max_waste: float = 0.2, min_tokens: int = 128) -> list[list[int]]:
    """Indices into `lengths`, grouped: each group's inputs are similar in length, shortest group first.

    Every index appears in exactly one group. Each group's padded tokens (size × longest) are within
    `(1 + max_waste)` × its real tokens, or at most `min_tokens`.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    group: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]
        padded = (len(group) + 1) * n  # sorted ascending: the newcomer is the group's longest
        if group and padded > (1 + max_waste) * (real + n) and padded > min_tokens:
            groups.append(group)
            group, real = [], 0
        group.append(i)
        real += n
    if group:
        groups.append(group)
    return groups


def padded_tokens(lengths: Sequence[int]) -> int:
    """The tokens a `grouped_forward` over rows of these lengths computes, padding included: each group's rows ×
    its longest row."""
    return sum(len(group) * max(lengths[i] for i in group) for group in length_groups(lengths))


def grouped_forward(tokenizer: Any, model: Any, features: Mapping[str, Sequence[Sequence[int]]], device: str, *,
                    adapters: Sequence[str] | None = None) -> Iterator[tuple[list[int], Any]]:
    """Run `model` on unpadded tokenizer `features` in `length_groups`; yields (the group's indices, the model's
    output for them). `adapters`: each row's LoRA adapter, for a model shared by the adapters of one base
    (inference/adapters.py). The caller sets the grad mode (e.g. `torch.inference_mode()` around the loop)."""
    for group in length_groups([len(ids) for ids in features["input_ids"]]):
        batch = tokenizer.pad({k: [v[i] for i in group] for k, v in features.items()}, return_tensors="pt")
        extra = {} if adapters is None else {"adapter_names": [adapters[i] for i in group]}
        yield group, model(**{k: v.to(device) for k, v in batch.items()}, **extra)
