from __future__ import annotations

import pytest

from training.metrics import accuracy, f1_macro


def test_accuracy_on_hand_made_predictions() -> None:
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert accuracy([2, 2, 2], [2, 2, 2]) == 1.0
    assert accuracy([1, 0], [0, 1]) == 0.0


def test_f1_macro_on_hand_made_predictions() -> None:
    # class 0: tp=1 fp=1 fn=1 → F1 0.5; class 1: tp=1 fp=1 fn=1 → 0.5; class 2: tp=2 → 1.0
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 0, 2, 2]
    assert f1_macro(y_true, y_pred) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # A class never predicted counts with F1 0, so macro-F1 differs from accuracy on imbalance.
    y_true = [0, 0, 0, 0, 1]
    y_pred = [0, 0, 0, 0, 0]
    assert accuracy(y_true, y_pred) == 0.8
    assert f1_macro(y_true, y_pred) == pytest.approx((8 / 9 + 0.0) / 2)


def test_metrics_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        accuracy([0, 1], [0])
