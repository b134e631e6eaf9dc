import random

import pytest

from inference.batching import length_groups


def _padded(lengths: list[int], group: list[int]) -> int:
    return len(group) * max(lengths[i] for i in group)


def test_every_index_once_and_groups_sorted_by_length() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(97)]
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(97))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(flat)


@pytest.mark.parametrize("max_waste", [0.1, 0.2, 0.5])
def test_padding_waste_bounded_once_a_group_is_big_enough(max_waste: float) -> None:
    rng = random.Random(1)
    lengths = [rng.randint(5, 55) for _ in range(64)]
    groups = length_groups(lengths, max_waste=max_waste, min_tokens=64)
    for g in groups:
        real = sum(lengths[i] for i in g)
        # A group may exceed the waste bound only while it is small (at most min_tokens padded tokens).
        assert _padded(lengths, g) <= (1 + max_waste) * real or _padded(lengths, g) <= 64
    # Against padding everything to the longest, the groups compute far fewer tokens.
    total_padded = sum(_padded(lengths, g) for g in groups)
    assert total_padded < 0.75 * len(lengths) * max(lengths)


def test_one_long_input_is_never_merged_into_many_tiny_ones() -> None:
    # 100 one-token inputs are one small group; padding them all to 500 would compute 50,500 tokens for 600.
    groups = length_groups([1] * 100 + [500], min_tokens=128)
    assert groups == [list(range(100)), [100]]


def test_uniform_lengths_make_one_group_and_tiny_inputs_are_merged() -> None:
    assert length_groups([20] * 32) == [list(range(32))]
    # 10 very different but tiny inputs: one forward, not ten.
    assert len(length_groups([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], min_tokens=128)) == 1
    assert length_groups([]) == []
