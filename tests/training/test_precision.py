"""The training precision from the device's capabilities (given as inputs: no GPU needed), the model and the job."""

from __future__ import annotations

import pytest

from core.errors import ValidationFailed
from training.precision import choose_precision


@pytest.mark.parametrize(("cuda", "bf16_ok", "model_type", "fp16", "bf16", "expected"), [
    # Defaults: bf16 where the GPU has it, fp16 otherwise, fp32 for T5 there; fp32 on a CPU.
    (True, True, "bert", None, None, "bf16"),
    (True, True, "t5", None, None, "bf16"),
    (True, False, "bert", None, None, "fp16"),
    (True, False, "gpt2", None, None, "fp16"),
    (True, False, "t5", None, None, "fp32"),
    (True, False, "mt5", None, None, "fp32"),
    (False, False, "bert", None, None, "fp32"),
    # The job's overrides.
    (True, True, "bert", True, None, "fp16"),
    (True, False, "t5", True, None, "fp16"),
    (True, True, "bert", None, False, "fp16"),
    (True, True, "t5", None, False, "fp32"),
    (True, True, "bert", False, None, "bf16"),
    (True, False, "bert", False, None, "fp32"),
    (True, True, "bert", False, False, "fp32"),
    (True, True, "bert", None, True, "bf16"),
    (False, False, "bert", False, True, "bf16"),
    (False, False, "bert", False, False, "fp32"),
])
def test_choice(cuda: bool, bf16_ok: bool, model_type: str, fp16: bool | None, bf16: bool | None,
                expected: str) -> None:
    chosen = choose_precision(cuda=cuda, bf16_supported=bf16_ok, model_type=model_type, fp16=fp16, bf16=bf16)
    assert chosen.name == expected
    assert (chosen.fp16, chosen.bf16) == (expected == "fp16", expected == "bf16")
    event = chosen.event()
    assert event["precision"] == expected and event["reason"].startswith(expected)


def test_reasons_say_why() -> None:
    assert "t5 models overflow in fp16" in choose_precision(cuda=True, bf16_supported=False, model_type="t5",
                                                            fp16=None, bf16=None).reason
    assert "known to overflow" in choose_precision(cuda=True, bf16_supported=False, model_type="t5", fp16=True,
                                                   bf16=None).reason
    assert "supports it" in choose_precision(cuda=True, bf16_supported=True, model_type="bert", fp16=None,
                                             bf16=None).reason


@pytest.mark.parametrize(("cuda", "bf16_ok", "fp16", "bf16", "match"), [
    (False, False, True, None, "fp16 training needs a CUDA GPU"),
    (True, False, None, True, "does not support bf16"),
    (True, True, True, True, "cannot both be true"),
])
def test_impossible_requests_are_user_errors(cuda: bool, bf16_ok: bool, fp16: bool | None, bf16: bool | None,
                                             match: str) -> None:
    with pytest.raises(ValidationFailed, match=match):
        choose_precision(cuda=cuda, bf16_supported=bf16_ok, model_type="bert", fp16=fp16, bf16=bf16)
