"""LayerNorm that can normalise in autocast's low-precision dtype (an opt-in for GPU training).

CUDA autocast runs ``layer_norm`` in float32: a bfloat16 token map is cast up (one copy), normalised in
float32 (a float32 read and write) and cast back down by the next linear layer (another copy); the
backward does the same in reverse. That is ~20 bytes per value where a bfloat16 normalisation moves 4.
On an H100 the transformer LayerNorms of an XXS training step take 3.3 ms of 21 ms (``benchmarks/NOTES.md``,
session 10). With ``low_precision`` set, under autocast the layer casts its input and affine parameters
to autocast's dtype and normalises there (PyTorch's kernel still accumulates the statistics in float32);
the parameters stay float32, their gradients come back through the casts. Outside autocast, and with
the switch off (the default), it is ``nn.LayerNorm`` exactly; the state_dict is the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm``; with ``low_precision`` set, in autocast's dtype under autocast (see the module)."""

    low_precision = False  # set by set_low_precision_layernorm

    def forward(self, x: Tensor) -> Tensor:
        device = x.device.type
        if not (self.low_precision and torch.is_autocast_enabled(device)):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device)
        weight = None if self.weight is None else self.weight.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)


def set_low_precision_layernorm(model: nn.Module, enabled: bool = True) -> int:
    """Switch every :class:`LayerNorm` of ``model`` to (or from) autocast's dtype; returns how many."""
    norms = [module for module in model.modules() if isinstance(module, LayerNorm)]
    for norm in norms:
        norm.low_precision = enabled
    return len(norms)
