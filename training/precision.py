"""The floating-point precision a training run uses, from the device's capabilities, the model and the job.

bf16 has float32's range, so nothing overflows; fp16 does not, and the T5 family's activations overflow it (its
feed-forward outputs grow past 65504 and the loss turns NaN), so on a GPU without bf16 those train in float32. A
job's `fp16` / `bf16` hyperparameters override the choice. Pure logic: the caller passes the device's
capabilities, so it is tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import ValidationFailed

# Model types whose activations overflow float16 (T5 and its descendants).
FP16_OVERFLOWS = frozenset({"t5", "mt5", "umt5", "longt5", "switch_transformers", "t5gemma", "pegasus_x"})


@dataclass(frozen=True)
class Precision:
    fp16: bool
    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    def event(self) -> dict[str, Any]:
        return {"precision": self.name, "fp16": self.fp16, "bf16": self.bf16, "reason": self.reason}


def choose_precision(*, cuda: bool, bf16_supported: bool, model_type: str | None, fp16: bool | None,
                     bf16: bool | None) -> Precision:
    """`cuda`: training on a CUDA device; `bf16_supported`: that device computes in bf16 (Ampere or newer);
    `fp16` / `bf16`: the job's hyperparameters (None: not given)."""
    if fp16 and bf16:
        raise ValidationFailed("hyperparameters: fp16 and bf16 cannot both be true")
    if not cuda:
        if fp16:
            raise ValidationFailed("hyperparameters.fp16: fp16 training needs a CUDA GPU; this worker has none")
        if bf16:
            return Precision(False, True, "bf16 as the job asked (CPU autocast)")
        return Precision(False, False, "fp32: no CUDA GPU")
    if bf16:
        if not bf16_supported:
            raise ValidationFailed("hyperparameters.bf16: this worker's GPU does not support bf16; "
                                   "use fp16 (or neither, for float32)")
        return Precision(False, True, "bf16 as the job asked")
    if fp16:
        overflow = " (this model family is known to overflow in fp16: watch the loss)" \
            if model_type in FP16_OVERFLOWS else ""
        return Precision(True, False, f"fp16 as the job asked{overflow}")
    if bf16_supported and bf16 is None:
        return Precision(False, True, "bf16: the GPU supports it")
    if model_type in FP16_OVERFLOWS:
        return Precision(False, False, f"fp32: {model_type} models overflow in fp16"
                         + ("" if bf16 is None else ", and the job turned bf16 off")
                         + ("" if bf16_supported else " and the GPU has no bf16"))
    if fp16 is None:
        why = "the job turned bf16 off" if bf16 is False else "the GPU has no bf16"
        return Precision(True, False, f"fp16: {why}")
    return Precision(False, False, "fp32: the job turned half precision off")
