"""A whole MV2 block of the inference model as one Triton kernel, for channels-last maps on a GPU.

After :func:`~mobilevit_torch.models.fuse.fuse_for_inference` an MV2 block is three biased
convolutions (1x1 expand + SiLU, 3x3 depthwise + SiLU, 1x1 project) and a residual add. PyTorch runs
them as five or six kernels, and the expanded map, 2x (XXS) or 4x (XS, S) wider than the block's
input, is written and read back four times between them. On an H100 these convolutions run at a
third of their memory bound (``benchmarks/NOTES.md``, the convolution census): small channel counts
do not fill cuDNN's tiles.

Here one program computes ``BLOCK_P`` output pixels end to end and the expanded map never leaves the
chip. The depthwise convolution needs each output pixel's 3x3 neighbourhood of the expanded map,
which lives in other programs' rows, so each of the nine taps recomputes the expansion from the
input pixel under it (a ``[BLOCK_P, C_in] x [C_in, BLOCK_E]`` product on the tensor cores): 9x the
expansion's arithmetic, which is small next to memory traffic at these widths, for one read of the
input (the other eight come from cache) and one write of the output. Zero padding is applied to the
expanded map, as the convolution pads its input: taps outside the image contribute nothing (not
``silu(bias)``). The hidden width is walked in chunks of ``BLOCK_E``, each chunk's depthwise output
multiplied into the projection at once, so the registers hold one chunk, never the whole width.

Inference only (no autograd), on folded models; switched on by :func:`set_mv2_kernel`. It applies
to CUDA tensors, eager or under ``torch.compile`` (a ``torch.library.triton_op``: inductor puts the
kernel in its graph), not while tracing or exporting; everything else takes the ordinary modules.
With ``TRITON_INTERPRET=1`` set before import the kernel runs in Triton's interpreter on CPU tensors,
which is how the tests check it on machines without a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobilevit_torch.layers import triton_support as ts

if ts.TRITON_AVAILABLE:
    import triton
    import triton.language as tl

MAX_BLOCK_E = 64  # hidden channels per chunk

_PACKED = ("mv2_w_expand", "mv2_b_expand", "mv2_w_dw", "mv2_b_dw", "mv2_w_project", "mv2_b_project")


def set_mv2_kernel(model: nn.Module, enabled: bool = True) -> int:
    """Switch every MV2 block of an inference model (:func:`fuse_for_inference`) to (or from) the
    kernel; returns how many blocks. Raises ``ValueError`` for a model whose BatchNorm is not folded.

    Each block gets its weights in the kernel's layout as non-persistent buffers (they move with
    ``model.to(...)``, ``state_dict`` is unchanged); eager calls re-pack them when a weight changes."""
    from mobilevit_torch.blocks.inverted_residual import InvertedResidual

    blocks = [module for module in model.modules() if isinstance(module, InvertedResidual)]
    if enabled and not all(_is_folded(block) for block in blocks):
        raise ValueError("the MV2 kernel runs inference models only: fold BatchNorm first (fuse_for_inference)")
    for block in blocks:
        block.mv2_kernel = enabled
        if enabled:
            _pack(block)
        else:
            ts.drop_packed(block, _PACKED)
    return len(blocks)


def _is_folded(block: nn.Module) -> bool:
    units = (block.expand, block.depthwise, block.project)
    activations = [type(unit.act) for unit in units]
    return all(unit.is_fused for unit in units) and activations == [nn.SiLU, nn.SiLU, nn.Identity]


def _params(block: nn.Module) -> list[Tensor]:
    return [p for unit in (block.expand, block.depthwise, block.project) for p in unit.conv.parameters()]


@torch.no_grad()
def _pack(block: nn.Module) -> None:
    """The folded block's weights as the kernel reads them, float32: zero-padded to power-of-two widths
    of at least 16 (``tl.dot``'s smallest), matrices row-major ``[in, out]``."""
    expand, depthwise, project = block.expand.conv, block.depthwise.conv, block.project.conv
    in_chs, hidden, out_chs = expand.in_channels, expand.out_channels, project.out_channels
    cin, width, cout = (ts.padded_width(n) for n in (in_chs, hidden, out_chs))
    padded = ts.padded
    packed = (
        padded(expand.weight.reshape(hidden, in_chs).t(), cin, width),  # [E, C, 1, 1] -> [C, E]
        padded(expand.bias, width),
        padded(depthwise.weight.reshape(hidden, 9).t(), 9, width),  # [E, 1, 3, 3] -> [9, E]
        padded(depthwise.bias, width),
        padded(project.weight.reshape(out_chs, hidden).t(), width, cout),  # [O, E, 1, 1] -> [E, O]
        padded(project.bias, cout),
    )
    ts.store_packed(block, _PACKED, packed, _params(block))


def mv2_kernel_applies(x: Tensor, block: nn.Module) -> bool:
    """Whether :func:`mv2_forward` can stand in for ``block`` on ``x``: CUDA (or, in Triton's
    interpreter, CPU) channels-last maps, no autograd, not while tracing or exporting. Under
    ``torch.compile`` the kernel is part of the compiled graph (a ``triton_op``)."""
    return (
        ts.on_kernel_device(x)
        and x.dim() == 4
        and x.dtype in ts.KERNEL_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and ts.inference_only(x, block, block.expand.conv.weight)
        and _PACKED[0] in block._buffers
    )


def mv2_forward(x: Tensor, block: nn.Module) -> Tensor:
    """``block(x)`` for a folded MV2 block switched on by :func:`set_mv2_kernel`, in one kernel.

    Under CUDA autocast it computes in autocast's dtype (as the convolutions would), else in
    ``x``'s; products accumulate in float32 and the hidden map stays float32 on chip."""
    dtype = ts.compute_dtype(x)
    if x.dtype != dtype:
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    ts.repack_if_changed(block, _params(block), _pack)  # new weights loaded since the switch
    packed = [block._buffers[name] for name in _PACKED]
    stride, out_chs = block.depthwise.conv.stride[0], block.project.conv.out_channels
    return torch.ops.mobilevit_torch.mv2_block(x, *packed, stride, block.use_residual, out_chs)


if ts.TRITON_AVAILABLE:

    @torch.library.triton_op("mobilevit_torch::mv2_block", mutates_args=())
    def _mv2_block(
        x: Tensor, w_expand: Tensor, b_expand: Tensor, w_dw: Tensor, b_dw: Tensor, w_project: Tensor,
        b_project: Tensor, stride: int, residual: bool, out_chs: int,
    ) -> Tensor:  # fmt: skip
        """The launch, as an operator ``torch.compile`` can put in its graph."""
        batch, in_chs, height, width = x.shape
        cin, hidden, cout = w_expand.shape[0], w_expand.shape[1], w_project.shape[1]
        out_height, out_width = (height - 1) // stride + 1, (width - 1) // stride + 1  # 3x3, padding 1
        out = torch.empty(batch, out_height, out_width, out_chs, device=x.device, dtype=x.dtype)
        out = out.permute(0, 3, 1, 2)  # [B, OH, OW, O] -> [B, O, OH, OW], channels-last
        pixels = batch * out_height * out_width
        ts.launch(
            _mv2_kernel, (cin, hidden, cout, x.dtype, x.device), pixels, ts.tile_pixels(max(cin, cout), x.dtype), (),
            x, w_expand, b_expand, w_dw, b_dw, w_project, b_project, out,
            height, width, out_height, out_width, pixels, in_chs, out_chs,
            STRIDE=stride, RESIDUAL=residual, CIN=cin, HIDDEN=hidden, BLOCK_E=min(hidden, MAX_BLOCK_E), COUT=cout,
            PRECISION=ts.dot_precision(x), FAST_SILU=ts.fast_silu(x),
        )  # fmt: skip
        return out

    @triton.jit(do_not_specialize=["height", "width", "out_height", "out_width", "pixels"])
    def _mv2_kernel(
        x_ptr, w_expand_ptr, b_expand_ptr, w_dw_ptr, b_dw_ptr, w_project_ptr, b_project_ptr, out_ptr,
        height, width, out_height, out_width, pixels, in_chs, out_chs,
        STRIDE: tl.constexpr, RESIDUAL: tl.constexpr, CIN: tl.constexpr, HIDDEN: tl.constexpr,
        BLOCK_E: tl.constexpr, COUT: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr,
        FAST_SILU: tl.constexpr,
    ):  # fmt: skip
        """``BLOCK_P`` output pixels of ``project(silu(dw3x3(silu(expand(x))))) (+ x)``; x and out are
        channels-last maps, i.e. row-major ``[pixels, channels]`` matrices."""
        pixel, pixel_ok, sample, out_row, out_col = ts.output_pixels(BLOCK_P, pixels, out_height, out_width)
        cin = tl.arange(0, CIN)
        cout = tl.arange(0, COUT)
        result = tl.zeros([BLOCK_P, COUT], dtype=tl.float32)
        for chunk in range(0, HIDDEN, BLOCK_E):  # a loop, not unrolled: one body of nine taps to compile
            hidden = chunk + tl.arange(0, BLOCK_E)
            w_expand = tl.load(w_expand_ptr + cin[:, None] * HIDDEN + hidden[None, :])  # [CIN, E], float32
            w_expand = w_expand.to(x_ptr.dtype.element_ty)  # the product's operands in the map's dtype
            b_expand = tl.load(b_expand_ptr + hidden)
            depthwise = tl.zeros([BLOCK_P, BLOCK_E], dtype=tl.float32)
            for t in tl.static_range(9):
                row, col, inside = ts.tap(out_row, out_col, pixel_ok, height, width, t, STRIDE)
                source = ((sample * height + row) * width + col).to(tl.int64)
                x = tl.load(
                    x_ptr + source[:, None] * in_chs + cin[None, :],
                    mask=inside[:, None] & (cin < in_chs)[None, :],
                    other=0.0,
                )  # [P, CIN]
                h = ts.dot(x, w_expand, PRECISION) + b_expand[None, :]  # [P, E]
                h = ts.silu(h, FAST_SILU)
                h = tl.where(inside[:, None], h, 0.0)  # the depthwise convolution's zero padding
                depthwise += h * tl.load(w_dw_ptr + t * HIDDEN + hidden)[None, :]
            y = depthwise + tl.load(b_dw_ptr + hidden)[None, :]
            y = ts.silu(y, FAST_SILU)
            w_project = tl.load(w_project_ptr + hidden[:, None] * COUT + cout[None, :])  # [E, COUT], float32
            w_project = w_project.to(x_ptr.dtype.element_ty)
            result += ts.dot(y.to(w_project.dtype), w_project, PRECISION)
        result += tl.load(b_project_ptr + cout)[None, :]
        offsets = pixel.to(tl.int64)[:, None] * out_chs + cout[None, :]
        ok = pixel_ok[:, None] & (cout < out_chs)[None, :]
        if RESIDUAL:  # stride 1 and in_chs == out_chs: the input pixel under the output one
            result += tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + offsets, result.to(out_ptr.dtype.element_ty), mask=ok)
