"""Convolution -> BatchNorm -> SiLU, the basic unit of every MobileViT convolution."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobilevit_torch.layers.conv_kernel import conv3x3_forward, conv_kernel_applies
from mobilevit_torch.layers.fused_norm import batch_norm_act, fused_norm_applies

# Folded units run on the CPU as single oneDNN kernels with pre-arranged weights (see ConvNormAct.forward).
ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available()
# The overload itself: calling the packet would match the arguments against each of its overloads.
_CONVOLUTION_POINTWISE = torch.ops.mkldnn._convolution_pointwise.default if ONEDNN_AVAILABLE else None
_MAX_PACKED_SHAPES = 8  # input shapes remembered per unit; more than this starts the cache afresh


class _PackedWeights(dict):
    """Per input shape, the oneDNN call's arguments after the input: the weights pre-arranged for
    that shape, then bias, padding, stride, dilation, groups and activation. Derived from one version
    of the convolution's weight (``source``: its address and version counter). Never copied or saved;
    replaced, never cleared, so threads sharing a model never see it change under them."""

    def __init__(self, source: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.source = source

    def __deepcopy__(self, memo: dict[int, Any]) -> _PackedWeights:
        return _PackedWeights()

    def __reduce__(self) -> tuple[type, tuple]:
        return (_PackedWeights, ())


class ConvNormAct(nn.Module):
    """A bias-free convolution followed by BatchNorm and (optionally) SiLU.

    Every convolution in MobileViT (arXiv 2110.02178, Section 3 and Fig. 1b) except the 1x1
    projection into the transformer width uses this pattern. ``padding`` is ``kernel_size // 2``
    so stride 1 keeps the spatial size and stride 2 halves it (rounding up), as in the reference.

    :meth:`fuse_norm` turns the unit into its inference form (BatchNorm folded into a biased
    convolution); training and checkpoints always use the unfused ``conv.weight``/``bn.*`` names.
    """

    fused_norm = False  # training on a GPU: BatchNorm + SiLU as fused Triton kernels (set_fused_norm)
    conv_kernel = False  # folded dense 3x3 units in inference on a GPU: one Triton kernel (set_conv_kernels)
    # The channels of each map the unit's input is concatenated from, where its owner passes the maps
    # themselves to the kernel (the MobileViT block's fusion convolution); None: one map.
    input_splits: tuple[int, ...] | None = None

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        apply_act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs,
            out_chs,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_chs)
        self.act = nn.SiLU() if apply_act else nn.Identity()
        self.onednn_kernel = True  # once folded: see _onednn_forward (False: PyTorch's convolution, for A/B)
        self._packed = _PackedWeights()

    @property
    def is_fused(self) -> bool:
        return isinstance(self.bn, nn.Identity)

    @torch.no_grad()
    def fuse_norm(self) -> None:
        """Fold BatchNorm's running statistics and affine into the convolution (inference only).

        ``bn(conv(x)) = s * (W x) + (beta - s * mean)`` with ``s = gamma / sqrt(var + eps)``, so the
        convolution gets weight ``s * W`` and a bias, and BatchNorm becomes the identity. Computed in
        float64 so the folded model matches the unfused one to float32 rounding.
        """
        if self.is_fused:
            return
        bn = self.bn
        assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None
        weight = self.conv.weight
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.double() - bn.running_mean.double() * scale
        fused = nn.Conv2d(
            self.conv.in_channels,
            self.conv.out_channels,
            self.conv.kernel_size,
            stride=self.conv.stride,
            padding=self.conv.padding,
            groups=self.conv.groups,
            bias=True,
            device=weight.device,
            dtype=weight.dtype,
        )
        # [out] -> [out, 1, 1, 1]: one scale per output channel
        fused.weight.copy_(weight.double() * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bias)
        if weight.is_contiguous(memory_format=torch.channels_last):
            fused.to(memory_format=torch.channels_last)
        self.conv = fused
        self.bn = nn.Identity()

    def norm_act(self, x: Tensor) -> Tensor:
        """BatchNorm and activation of a convolution output (for callers that run the convolution)."""
        if self.fused_norm and fused_norm_applies(x, self.bn):
            return batch_norm_act(x, self.bn, act=isinstance(self.act, nn.SiLU))  # type: ignore[arg-type]
        x = self.bn(x)
        if isinstance(self.act, nn.SiLU) and not torch.is_grad_enabled() and not torch.jit.is_tracing():
            # No autograd graph, so nothing else holds the normalised map: activate it in place and
            # skip allocating (on the CPU, page-faulting in) another one. With autograd on, in place
            # would make autograd clone the input instead. Not while tracing: torch.jit.trace checks
            # its graph by tracing again under no_grad, and the graphs must not differ.
            return F.silu(x, inplace=True)
        return self.act(x)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv_kernel and conv_kernel_applies(x, self):
            return conv3x3_forward(self, x)
        if self.is_fused and self.onednn_kernel and _packed_kernel_applies(x):
            return self._onednn_forward(x)
        return self.norm_act(self.conv(x))

    def _onednn_forward(self, x: Tensor) -> Tensor:
        """The folded convolution and its SiLU as one oneDNN kernel, weights pre-arranged for this input shape.

        Eager PyTorch re-arranges the weights into oneDNN's blocked layout on every call and runs
        SiLU as a second pass over the output; here the first happens once per input shape and the
        second is fused (what ``torch.compile`` does when it freezes a model). Measured on a 2-core
        CPU (``bench_models.py --impl ours-fused,ours-fused-ref``): batch-32 inference 3.5-5.7 %
        faster, batch 1 1-2 %. Same result to float32 rounding."""
        weight = self.conv.weight
        if weight.is_inference():  # made under inference_mode: no version counter to notice a change by
            return self.norm_act(self.conv(x))
        cache, source = self._packed, (weight.data_ptr(), weight._version)
        if cache.source != source or len(cache) >= _MAX_PACKED_SHAPES:  # new or changed weights: pack again
            cache = self._packed = _PackedWeights(source)
        args = cache.get(x.shape)
        if args is None:  # once per input shape; every later call is one op with ready-made arguments
            args = cache[x.shape] = self._onednn_arguments(x.shape)
        return _CONVOLUTION_POINTWISE(x, *args)

    def _onednn_arguments(self, shape: torch.Size) -> tuple:
        conv = self.conv
        padding, stride, dilation = list(conv.padding), list(conv.stride), list(conv.dilation)  # type: ignore[arg-type]
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            conv.weight.detach().contiguous().to_mkldnn(), padding, stride, dilation, conv.groups, list(shape)
        )
        activation = "swish" if isinstance(self.act, nn.SiLU) else "none"  # swish(x) = x * sigmoid(x) = SiLU
        bias = None if conv.bias is None else conv.bias.detach()
        return (packed, bias, padding, stride, dilation, conv.groups, activation, [], "")


def _packed_kernel_applies(x: Tensor) -> bool:
    """Plain float32 CPU inference: not autograd, autocast, tracing, exporting or compiling (those see
    the ordinary convolution)."""
    return (
        ONEDNN_AVAILABLE
        and x.is_cpu
        and x.dtype == torch.float32
        and x.dim() == 4
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
    )
