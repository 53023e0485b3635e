"""Folded dense 3x3 convolutions (+ SiLU) as one Triton kernel, for inference on a GPU.

Three kinds of unit in MobileViT are full (not depthwise) 3x3 convolutions: the stem (3 -> 16,
stride 2) and, in every MobileViT block, the local convolution (C -> C) and the fusion convolution
(2C -> C over the block input concatenated with the transformer's output). On an H100 cuDNN runs
them at 8-13x their memory bound (``benchmarks/NOTES.md``, the convolution census): 3 input
channels, or 48-160, do not fill its tiles. Here each is one implicit-GEMM kernel: a program takes
``BLOCK_P`` output pixels x ``BLOCK_N`` output channels and sums, over the nine taps, the products
of the input pixels under the tap (``[BLOCK_P, BLOCK_K]`` chunks of channels) with that tap's
weights; bias and SiLU are applied before the one write. The fusion convolution reads its two
inputs where they are, so the concatenated map is never made. Inputs may be channels-last or NCHW
(the stem reads the image as given, in float32 under autocast) and are cast on load.

Inference only, on folded models; switched on by :func:`set_conv_kernels`. Same conditions as the
MV2 kernel (:mod:`mobilevit_torch.blocks.mv2_kernel`): CUDA tensors, eager or compiled, no autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobilevit_torch.layers import triton_support as ts

if ts.TRITON_AVAILABLE:
    import triton
    import triton.language as tl

_PACKED = ("conv3x3_weight", "conv3x3_bias")
MAX_BLOCK_N, MAX_BLOCK_K = 64, 32  # output channels per program, input channels per product


def is_dense_3x3(unit: nn.Module) -> bool:
    conv = unit.conv
    return conv.kernel_size == (3, 3) and conv.groups == 1 and conv.padding == (1, 1) and conv.dilation == (1, 1)


def pack_conv(unit: nn.Module, splits: tuple[int, ...] | None = None) -> None:
    """Give a folded dense 3x3 :class:`ConvNormAct` its kernel weights: ``[9, K, O]`` float32 (tap,
    input channel, output channel), each input's channels padded to a power of two. ``splits``: the
    channel counts of the inputs the unit reads (the fusion convolution: the block input's and the
    transformer output's); by default one input."""
    conv = unit.conv
    splits = splits or (conv.in_channels,)
    if sum(splits) != conv.in_channels:
        raise ValueError(f"inputs of {splits} channels for a convolution over {conv.in_channels}")
    out_chs, cout = conv.out_channels, ts.padded_width(conv.out_channels)
    # [O, C, 3, 3] -> [3, 3, C, O] -> [9, C, O]: per tap, a [C, O] matrix
    weight = conv.weight.detach().permute(2, 3, 1, 0).reshape(9, conv.in_channels, out_chs)
    parts, start = [], 0
    for chs in splits:
        parts.append(ts.padded(weight[:, start : start + chs], 9, ts.padded_width(chs), cout))
        start += chs
    packed = (torch.cat(parts, dim=1), ts.padded(conv.bias.detach(), cout))  # [9, K1 + K2, O], [O]
    unit.__dict__["_conv3x3_splits"] = splits
    ts.store_packed(unit, _PACKED, packed, list(conv.parameters()))


def unpack_conv(unit: nn.Module) -> None:
    ts.drop_packed(unit, _PACKED)


def conv_kernel_applies(x: Tensor, unit: nn.Module) -> bool:
    """Whether :func:`conv3x3_forward` can stand in for ``unit`` on ``x`` (its first input)."""
    return (
        ts.on_kernel_device(x)
        and x.dim() == 4
        and x.dtype in ts.KERNEL_DTYPES
        and ts.inference_only(x, unit, unit.conv.weight)
        and _PACKED[0] in unit._buffers
    )


def conv3x3_forward(unit: nn.Module, *inputs: Tensor) -> Tensor:
    """``unit(torch.cat(inputs, dim=1))`` for a packed unit (see :func:`pack_conv`), channels-last
    output in the compute dtype (autocast's under CUDA autocast, else the first input's)."""
    ts.repack_if_changed(unit, list(unit.conv.parameters()), lambda u: pack_conv(u, u.__dict__["_conv3x3_splits"]))
    if tuple(x.shape[1] for x in inputs) != unit.__dict__["_conv3x3_splits"]:
        raise ValueError(
            f"inputs of {[x.shape[1] for x in inputs]} channels for a kernel packed for {unit._conv3x3_splits}"
        )
    weight, bias = unit._buffers[_PACKED[0]], unit._buffers[_PACKED[1]]
    second = inputs[1] if len(inputs) > 1 else None
    act = isinstance(unit.act, nn.SiLU)
    return torch.ops.mobilevit_torch.conv3x3(
        inputs[0], second, weight, bias, unit.conv.stride[0], ts.padded_width(inputs[0].shape[1]), act,
        unit.conv.out_channels, ts.compute_dtype(inputs[0]),
    )  # fmt: skip


def set_conv_kernels(model: nn.Module, enabled: bool = True) -> int:
    """Switch every folded dense 3x3 unit of ``model`` (stem, MobileViT blocks' local and fusion
    convolutions) to (or from) the kernel; returns how many. Raises ``ValueError`` for a model whose
    BatchNorm is not folded (:func:`~mobilevit_torch.models.fuse.fuse_for_inference`)."""
    from mobilevit_torch.layers.conv_norm_act import ConvNormAct

    units = [m for m in model.modules() if isinstance(m, ConvNormAct) and is_dense_3x3(m)]
    if enabled and not all(unit.is_fused for unit in units):
        raise ValueError("the convolution kernels run inference models only: fold BatchNorm first (fuse_for_inference)")
    for unit in units:
        unit.conv_kernel = enabled
        if enabled:
            pack_conv(unit, unit.input_splits)  # the fusion convolution reads two maps, as its block said
        else:
            unpack_conv(unit)
    return len(units)


if ts.TRITON_AVAILABLE:

    @torch.library.triton_op("mobilevit_torch::conv3x3", mutates_args=())
    def _conv3x3(
        x1: Tensor, x2: Tensor | None, weight: Tensor, bias: Tensor, stride: int, k1: int, act: bool, out_chs: int,
        dtype: torch.dtype,
    ) -> Tensor:  # fmt: skip
        """The launch, as an operator ``torch.compile`` can put in its graph."""
        batch, c1, height, width = x1.shape
        c2 = 0 if x2 is None else x2.shape[1]
        k2, cout = weight.shape[1] - k1, weight.shape[2]
        out_height, out_width = (height - 1) // stride + 1, (width - 1) // stride + 1  # 3x3, padding 1
        out = torch.empty(batch, out_height, out_width, out_chs, device=x1.device, dtype=dtype)
        out = out.permute(0, 3, 1, 2)  # [B, OH, OW, O] -> [B, O, OH, OW], channels-last
        pixels = batch * out_height * out_width
        block_n = min(cout, MAX_BLOCK_N)
        ts.launch(
            _conv3x3_kernel, (k1, k2, cout, dtype, x1.device), pixels, ts.MAX_TILE_PIXELS, (cout // block_n,),
            x1, x1 if x2 is None else x2, weight, bias, out,
            height, width, out_height, out_width, pixels, c1, c2, out_chs,
            *x1.stride(), *(x1 if x2 is None else x2).stride(),
            STRIDE=stride, K1=k1, K2=k2, COUT=cout, BLOCK_N=block_n, BLOCK_K1=min(k1, MAX_BLOCK_K),
            BLOCK_K2=min(max(k2, 16), MAX_BLOCK_K), ACT=act, PRECISION=ts.dot_precision(out),
            FAST_SILU=ts.fast_silu(out),
        )  # fmt: skip
        return out

    @triton.jit
    def _accumulate(
        acc, x_ptr, w_ptr, out_ptr, base, inside, chs, stride_c, tap, w_row0, out_ch,
        K: tl.constexpr, K_ALL: tl.constexpr, COUT: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """``acc += x[pixels under the tap, :chs] @ weight[tap, w_row0 : w_row0 + chs, out_ch]``, the
        operands in the output's dtype."""
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(
                x_ptr + base[:, None] + k[None, :].to(tl.int64) * stride_c,
                mask=inside[:, None] & (k < chs)[None, :],
                other=0.0,
            )  # [P, BLOCK_K]
            w = tl.load(w_ptr + (tap * K_ALL + w_row0 + k)[:, None] * COUT + out_ch[None, :])  # [BLOCK_K, N]
            dtype = out_ptr.dtype.element_ty
            acc += ts.dot(x.to(dtype), w.to(dtype), PRECISION)
        return acc

    @triton.jit(do_not_specialize=["height", "width", "out_height", "out_width", "pixels"])
    def _conv3x3_kernel(
        x1_ptr, x2_ptr, w_ptr, b_ptr, out_ptr, height, width, out_height, out_width, pixels, c1, c2, out_chs,
        s1n, s1c, s1h, s1w, s2n, s2c, s2h, s2w,
        STRIDE: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, COUT: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K1: tl.constexpr, BLOCK_K2: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
        FAST_SILU: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """``BLOCK_P`` output pixels x ``BLOCK_N`` output channels of ``act(conv3x3(cat(x1, x2)) + b)``;
        ``x1``/``x2`` in any layout (their strides), the output channels-last (``[pixels, O]`` rows)."""
        pixel, pixel_ok, sample, out_row, out_col = ts.output_pixels(BLOCK_P, pixels, out_height, out_width)
        out_ch = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
        sample = sample.to(tl.int64)
        for t in tl.static_range(9):
            row, col, inside = ts.tap(out_row, out_col, pixel_ok, height, width, t, STRIDE)
            row, col = row.to(tl.int64), col.to(tl.int64)
            base = sample * s1n + row * s1h + col * s1w
            acc = _accumulate(
                acc, x1_ptr, w_ptr, out_ptr, base, inside, c1, s1c, t, 0, out_ch, K1, K1 + K2, COUT, BLOCK_K1, PRECISION
            )
            if K2 > 0:  # the second input's channels follow the first's in the weight rows
                base = sample * s2n + row * s2h + col * s2w
                acc = _accumulate(
                    acc, x2_ptr, w_ptr, out_ptr, base, inside, c2, s2c, t, K1, out_ch, K2, K1 + K2, COUT, BLOCK_K2,
                    PRECISION,
                )  # fmt: skip
        acc += tl.load(b_ptr + out_ch)[None, :]
        if ACT:
            acc = ts.silu(acc, FAST_SILU)
        offsets = pixel.to(tl.int64)[:, None] * out_chs + out_ch[None, :]
        ok = pixel_ok[:, None] & (out_ch < out_chs)[None, :]
        tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=ok)
