"""LayerNorm written as an L2 normalisation, for the TFLite export: exact in float, and int8-friendly.

TensorFlow writes ``nn.LayerNorm`` as MEAN, SQUARED_DIFFERENCE, MEAN, ADD eps, RSQRT, MUL. In a
full-integer int8 model each of those tensors gets one scale for all tokens, and the variance spans
too wide a range for 8 bits: the tokens with a small variance see it rounded to a few levels (or to
zero) and come out wrong. TFLite's builtin L2_NORMALIZATION op has an int8 kernel built for exactly
this: it sums the squares in 32-bit integers per token and writes ``x / ||x||`` at a fixed scale of
1/128 (its values lie in [-1, 1]), so no wide-range intermediate tensor is ever quantised.

The identity (over the last dimension, of size C; ``xc = x - mean(x)``, ``var = mean(xc^2)``):

    (x - mean) / sqrt(var + eps) = sqrt(C) * xc / sqrt(sum(xc^2) + C * eps)

and appending one constant channel ``k = sqrt(C * eps)`` to ``xc`` turns the right-hand side into a
plain L2 normalisation over C + 1 channels, of which the first C are kept:

    l2norm([xc, k])[:C] = xc / sqrt(sum(xc^2) + k^2) = xc / sqrt(sum(xc^2) + C * eps)

so ``LayerNorm(x) = (sqrt(C) * gamma) * l2norm([xc, k])[:C] + beta``, exactly, eps included.

How it reaches TFLite: TensorFlow's converter fuses ``x / sqrt(reduce_sum(square(x)))`` over the last
axis into L2_NORMALIZATION. onnx2tf writes ONNX ``ReduceSumSquare`` as ``reduce_sum(square(x))`` (a
``Mul(x, x)`` would stay a MUL and not fuse; onnx2tf's ``ReduceL2`` and ``LpNormalization`` fail on
this graph), so during ``torch.onnx.export`` the sum of squares is emitted as that ONNX op with
``torch.onnx.ops.symbolic``. In eager PyTorch the same sum is computed with ordinary ops.

The library's models keep ``nn.LayerNorm``; :func:`with_l2_layernorms` makes the copy that the TFLite
export converts.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


class L2LayerNorm(nn.Module):
    """``nn.LayerNorm`` over the last dimension, computed as an L2 normalisation (see the module docstring)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        if len(norm.normalized_shape) != 1:
            raise ValueError(f"only a LayerNorm over the last dimension is supported, got {norm.normalized_shape}")
        (channels,) = norm.normalized_shape
        weight = norm.weight.detach() if norm.weight is not None else torch.ones(channels)
        bias = norm.bias.detach() if norm.bias is not None else torch.zeros(channels)
        self.channels = channels
        self.pad_value = math.sqrt(channels * norm.eps)  # k: k^2 = C * eps
        self.register_buffer("scale", weight.clone() * math.sqrt(channels))  # [C]: sqrt(C) * gamma
        self.register_buffer("shift", bias.clone())  # [C]: beta

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., C]
        centred = x - x.mean(dim=-1, keepdim=True)  # [..., C]
        pad = centred.new_full((*centred.shape[:-1], 1), self.pad_value)  # [..., 1], every value k
        extended = torch.cat((centred, pad), dim=-1)  # [..., C + 1]
        normalised = extended / torch.sqrt(_sum_of_squares(extended))  # [..., C + 1] / [..., 1]
        return normalised[..., : self.channels] * self.scale + self.shift  # [..., C]

    def extra_repr(self) -> str:
        return f"{self.channels}, pad={self.pad_value:.3g}"


def _sum_of_squares(x: Tensor) -> Tensor:
    """``sum(x^2)`` over the last dimension, kept: ``[..., D] -> [..., 1]``; ONNX ``ReduceSumSquare`` when exporting."""
    if torch.onnx.is_in_onnx_export():
        axes = torch.tensor([-1], dtype=torch.int64)  # [1]: ReduceSumSquare takes its axes as an input (opset 18+)
        shape = (*x.shape[:-1], 1)
        return torch.onnx.ops.symbolic("ReduceSumSquare", (x, axes), {"keepdims": 1}, dtype=x.dtype, shape=shape)
    return (x * x).sum(dim=-1, keepdim=True)


def with_l2_layernorms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.LayerNorm`` replaced by an :class:`L2LayerNorm` (``model`` is untouched)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, L2LayerNorm(child))
    return model
