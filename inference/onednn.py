"""The linear layers of a CPU generation model on oneDNN, each weight packed once at load.

Decoding steps multiply a few rows (one per running request) by every weight matrix. For such products PyTorch's
default CPU kernel (MKL's sgemm) is slow: on the bench's 2-core EPYC, one thread, the matrix products of a
distilgpt2-shaped model take 18 ms for 1 row, 32 ms for 4 rows, 45 ms for 16 and 68 ms for 32. oneDNN's inner
product on weights reordered once into its blocked layout takes 17.6, 14, 24 and 41 ms, and 0.74x MKL's time for a
640-token prefill, so the batch of a busy model costs much less per step (the main part of a short request's time
under load). The math is fp32 as before; the summation order differs, so logits may differ in the last bits.

These are the ops PyTorch's own compiler emits for the same purpose (`torch.ops.mkldnn._reorder_linear_weight`,
`_linear_pointwise`, in torch/_inductor/fx_passes/mkldnn_fusion.py): private, hence checked against the dense
product on each layer at load, and a layer that does not match (or a build without oneDNN) stays as it was.
The packed copy sits beside the dense weight (which the model still owns), so the packed layers' weights take
twice their memory. Weights must not change after packing (serving never changes them).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("ftserve.inference")
PACK_ROWS_HINT = 16  # the rows oneDNN picks its weight layout for: a decoding step's batch (any count works)


class PackedLinear:
    """`y = x @ weight.T + bias` on oneDNN with `weight` ([out, in], fp32, CPU) packed once."""

    def __init__(self, weight: Any, bias: Any) -> None:
        import torch

        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS_HINT)
        self.bias = None if bias is None else bias.detach()
        self.out_features = int(weight.shape[0])

    def __call__(self, x: Any) -> Any:
        import torch

        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)


def pack_linear_layers(model: Any) -> int:
    """Every `nn.Linear` and transformers `Conv1D` (GPT-2's layers) of an fp32 CPU `model` computes on oneDNN
    with its weight packed; returns how many layers were packed (0 without oneDNN)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if not (torch.backends.mkldnn.enabled and torch.backends.mkldnn.is_available()):
        return 0
    packed = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, Conv1D):
                weight = module.weight.t()  # Conv1D keeps [in, out]
            elif type(module) is torch.nn.Linear:  # not a subclass (quantized, adapters) whose forward differs
                weight = module.weight
            else:
                continue
            if weight.dtype != torch.float32 or weight.device.type != "cpu":
                continue
            layer = PackedLinear(weight, module.bias)
            probe = torch.randn(4, weight.shape[1])
            if not torch.allclose(layer(probe), module(probe), rtol=1e-3, atol=1e-4):
                log.warning("oneDNN's product differs from the dense one on layer %s: it stays dense", name)
                continue
            module.forward = layer
            packed += 1
    return packed
