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
to CUDA tensors outside ``torch.compile`` and tracing; everything else takes the ordinary modules.
With ``TRITON_INTERPRET=1`` set before import the kernel runs in Triton's interpreter on CPU tensors,
which is how the tests check it on machines without a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobilevit_torch.layers.fused_norm import INTERPRET, TRITON_AVAILABLE

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    INTERPRETED = tl.constexpr(INTERPRET)  # a compile-time constant inside the kernel

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_BLOCK_P, MIN_BLOCK_P = 64, 16  # output pixels per program
MAX_BLOCK_E = 64  # hidden channels per chunk
# Rows of the widest padded input or output of up to this many bytes take MAX_BLOCK_P pixels per program,
# twice as wide rows half as many: Triton's shared memory grows with BLOCK_P x that width (H100, sm_90:
# 90 KiB for XXS's widest block in bfloat16, 64 pixels; 108-143 KiB for S's in float32, 16 pixels).
_ROW_BYTES = 256


def set_mv2_kernel(model: nn.Module, enabled: bool = True) -> int:
    """Switch every MV2 block of an inference model (:func:`fuse_for_inference`) to (or from) the
    kernel; returns how many blocks. Raises ``ValueError`` for a model whose BatchNorm is not folded."""
    from mobilevit_torch.blocks.inverted_residual import InvertedResidual

    blocks = [module for module in model.modules() if isinstance(module, InvertedResidual)]
    if enabled and not all(_is_folded(block) for block in blocks):
        raise ValueError("the MV2 kernel runs inference models only: fold BatchNorm first (fuse_for_inference)")
    for block in blocks:
        block.mv2_kernel = enabled
    return len(blocks)


def _is_folded(block: nn.Module) -> bool:
    units = (block.expand, block.depthwise, block.project)
    return all(unit.is_fused for unit in units) and [type(unit.act) for unit in units] == [
        nn.SiLU,
        nn.SiLU,
        nn.Identity,
    ]


def mv2_kernel_applies(x: Tensor, block: nn.Module) -> bool:
    """Whether :func:`mv2_forward` can stand in for ``block`` on ``x``."""
    return (
        TRITON_AVAILABLE
        and (x.is_cuda or (INTERPRET and x.is_cpu))
        and x.dim() == 4
        and x.dtype in _DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and not block.training
        and not (torch.is_grad_enabled() and (x.requires_grad or block.expand.conv.weight.requires_grad))
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and _is_folded(block)
    )


def mv2_forward(x: Tensor, block: nn.Module) -> Tensor:
    """``block(x)`` for a folded MV2 block (see :func:`mv2_kernel_applies`), in one kernel.

    Under CUDA autocast it computes in autocast's dtype (as the convolutions would), else in
    ``x``'s; products accumulate in float32 and the hidden map stays float32 on chip."""
    dtype = torch.get_autocast_dtype("cuda") if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype
    if x.dtype != dtype:
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    weights = _kernel_weights(block, dtype, x.device)
    batch, in_chs, height, width = x.shape
    stride = block.depthwise.conv.stride[0]
    out_height, out_width = (height - 1) // stride + 1, (width - 1) // stride + 1  # 3x3, padding 1
    out_chs = block.project.conv.out_channels
    out = torch.empty(batch, out_chs, out_height, out_width, device=x.device, dtype=dtype)
    out = out.contiguous(memory_format=torch.channels_last)
    pixels = batch * out_height * out_width
    while True:
        try:
            _mv2_kernel[(triton.cdiv(pixels, weights.block_p),)](
                x, *weights.tensors, out, height, width, out_height, out_width, pixels, in_chs, out_chs,
                STRIDE=stride, RESIDUAL=block.use_residual, CIN=weights.cin, HIDDEN=weights.hidden,
                BLOCK_E=weights.block_e, COUT=weights.cout, BLOCK_P=weights.block_p, PRECISION=_precision(x),
                num_stages=1,  # software pipelining of the tap loads would only add shared memory: they hit cache
            )  # fmt: skip
            break
        except triton.runtime.errors.OutOfResources:  # a GPU with less shared memory per block: smaller tiles
            if weights.block_p <= MIN_BLOCK_P:
                raise
            weights.block_p //= 2
    return out


def _precision(x: Tensor) -> str:
    """``tl.dot``'s input precision: TF32 for float32 maps where cuDNN's convolutions would use it."""
    return "tf32" if x.is_cuda and x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


class _KernelWeights:
    """The folded block's weights as the kernel reads them: zero-padded to power-of-two widths of at
    least 16 (``tl.dot``'s smallest), matrices row-major ``[in, out]``, biases float32."""

    def __init__(self, block: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        expand, depthwise, project = block.expand.conv, block.depthwise.conv, block.project.conv
        in_chs, hidden, out_chs = expand.in_channels, expand.out_channels, project.out_channels
        self.cin, self.hidden, self.cout = (max(16, triton.next_power_of_2(n)) for n in (in_chs, hidden, out_chs))
        self.block_e = min(self.hidden, MAX_BLOCK_E)
        row_bytes = max(self.cin, self.cout) * torch.finfo(dtype).bits // 8
        self.block_p = max(MIN_BLOCK_P, MAX_BLOCK_P * _ROW_BYTES // max(row_bytes, _ROW_BYTES))

        def padded(values: Tensor, shape: tuple[int, ...], out_dtype: torch.dtype) -> Tensor:
            buffer = torch.zeros(shape, device=device, dtype=out_dtype)
            buffer[tuple(slice(0, n) for n in values.shape)] = values.detach().to(device, out_dtype)
            return buffer

        f32 = torch.float32
        self.tensors = (
            padded(expand.weight.reshape(hidden, in_chs).t(), (self.cin, self.hidden), dtype),  # [E, C, 1, 1] -> [C, E]
            padded(expand.bias, (self.hidden,), f32),
            padded(depthwise.weight.reshape(hidden, 9).t(), (9, self.hidden), f32),  # [E, 1, 3, 3] -> [9, E]
            padded(depthwise.bias, (self.hidden,), f32),
            padded(
                project.weight.reshape(out_chs, hidden).t(), (self.hidden, self.cout), dtype
            ),  # [O, E, 1, 1] -> [E, O]
            padded(project.bias, (self.cout,), f32),
        )


def _kernel_weights(block: nn.Module, dtype: torch.dtype, device: torch.device) -> _KernelWeights:
    """The block's kernel weights, made once per dtype and device and again when a weight changes."""
    params = [p for unit in (block.expand, block.depthwise, block.project) for p in unit.conv.parameters()]
    # Weights made under inference_mode have no version counter: their storage identifies them.
    source = (dtype, device, *((p.data_ptr(), -1 if p.is_inference() else p._version) for p in params))
    cached = block.__dict__.get("_mv2_weights")
    if cached is None or cached[0] != source:
        cached = block.__dict__["_mv2_weights"] = (source, _KernelWeights(block, dtype, device))
    return cached[1]


if TRITON_AVAILABLE:

    @triton.jit
    def _dot(a, b, PRECISION: tl.constexpr):
        """``a @ b`` accumulated in float32. Triton's interpreter multiplies 16-bit floats wrongly (3.8:
        their bit patterns as numbers), so there the operands, already rounded, are widened first:
        the same products, summed in another order."""
        if INTERPRETED:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit(do_not_specialize=["height", "width", "out_height", "out_width", "pixels"])
    def _mv2_kernel(
        x_ptr, w_expand_ptr, b_expand_ptr, w_dw_ptr, b_dw_ptr, w_project_ptr, b_project_ptr, out_ptr,
        height, width, out_height, out_width, pixels, in_chs, out_chs,
        STRIDE: tl.constexpr, RESIDUAL: tl.constexpr, CIN: tl.constexpr, HIDDEN: tl.constexpr,
        BLOCK_E: tl.constexpr, COUT: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """``BLOCK_P`` output pixels of ``project(silu(dw3x3(silu(expand(x))))) (+ x)``; x and out are
        channels-last maps, i.e. row-major ``[pixels, channels]`` matrices."""
        pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # [P]: index into [B, OH, OW]
        pixel_ok = pixel < pixels
        sample = pixel // (out_height * out_width)
        out_row = (pixel // out_width) % out_height
        out_col = pixel % out_width
        cin = tl.arange(0, CIN)
        cout = tl.arange(0, COUT)
        result = tl.zeros([BLOCK_P, COUT], dtype=tl.float32)
        for chunk in range(0, HIDDEN, BLOCK_E):  # a loop, not unrolled: one body of nine taps to compile
            hidden = chunk + tl.arange(0, BLOCK_E)
            w_expand = tl.load(w_expand_ptr + cin[:, None] * HIDDEN + hidden[None, :])  # [CIN, E]
            b_expand = tl.load(b_expand_ptr + hidden)
            depthwise = tl.zeros([BLOCK_P, BLOCK_E], dtype=tl.float32)
            for tap in tl.static_range(9):
                in_row = out_row * STRIDE + (tap // 3 - 1)
                in_col = out_col * STRIDE + (tap % 3 - 1)
                inside = pixel_ok & (in_row >= 0) & (in_row < height) & (in_col >= 0) & (in_col < width)
                source = ((sample * height + in_row) * width + in_col).to(tl.int64)
                x = tl.load(
                    x_ptr + source[:, None] * in_chs + cin[None, :],
                    mask=inside[:, None] & (cin < in_chs)[None, :],
                    other=0.0,
                )  # [P, CIN]
                h = _dot(x, w_expand, PRECISION) + b_expand[None, :]  # [P, E]
                h = h * tl.sigmoid(h)
                h = tl.where(inside[:, None], h, 0.0)  # the depthwise convolution's zero padding
                depthwise += h * tl.load(w_dw_ptr + tap * HIDDEN + hidden)[None, :]
            y = depthwise + tl.load(b_dw_ptr + hidden)[None, :]
            y = y * tl.sigmoid(y)
            w_project = tl.load(w_project_ptr + hidden[:, None] * COUT + cout[None, :])  # [E, COUT]
            result += _dot(y.to(w_project.dtype), w_project, PRECISION)
        result += tl.load(b_project_ptr + cout)[None, :]
        offsets = pixel.to(tl.int64)[:, None] * out_chs + cout[None, :]
        ok = pixel_ok[:, None] & (cout < out_chs)[None, :]
        if RESIDUAL:  # stride 1 and in_chs == out_chs: the input pixel under the output one
            result += tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + offsets, result.to(out_ptr.dtype.element_ty), mask=ok)
