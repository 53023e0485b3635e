"""Training-mode BatchNorm + SiLU as fused Triton kernels, for channels-last maps on a GPU.

On an H100 BatchNorm's channels-last training kernels take 42 % of an eager XXS training step
(``benchmarks/NOTES.md``): PyTorch runs BatchNorm and SiLU as separate passes and keeps both the
convolution output and the normalised map for the backward. A channels-last map ``[B, C, H, W]`` is
a row-major ``[M, C]`` matrix with ``M = B * H * W``, and here:

- forward: per-channel statistics (one read), then normalise + affine + SiLU (one read, one write);
  only the convolution output is kept for the backward;
- backward: the two per-channel sums BatchNorm's gradient needs, with SiLU's derivative recomputed
  on the fly (two reads), then the input gradient (two reads, one write).

That is 8 passes over the map per step instead of 13. The statistics are exact two-level reductions
(per-program mean and squared deviations, merged with Chan et al.'s formula), deterministic (no
atomics), accumulated in float32 for bfloat16/float16 maps; running statistics are updated as
``nn.BatchNorm2d`` does (momentum, unbiased variance, ``num_batches_tracked``).

Switched on by :func:`set_fused_norm` (``train.py`` does it on CUDA unless ``fused_norm=false``; H100:
+21 % training img/s). It only applies to CUDA tensors in
training mode, outside ``torch.compile`` (inductor fuses these passes itself); everything else takes
PyTorch's BatchNorm. With ``TRITON_INTERPRET=1`` set before import the kernels run in Triton's
interpreter on CPU tensors too, which is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from mobilevit_torch.layers.triton_support import KERNEL_DTYPES, TRITON_AVAILABLE, on_kernel_device

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl


def fused_norm_applies(x: Tensor, bn: nn.Module) -> bool:
    """Whether :func:`batch_norm_act` can stand in for ``bn`` (and the activation) on ``x``."""
    return (
        isinstance(bn, nn.BatchNorm2d)
        and bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.affine
        and bn.momentum is not None
        and on_kernel_device(x)
        and x.dim() == 4
        and x.dtype in KERNEL_DTYPES
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.shape[0] * x.shape[2] * x.shape[3] > 1  # PyTorch raises for one value per channel; let it
        and not torch.compiler.is_compiling()
    )


def batch_norm_act(x: Tensor, bn: nn.BatchNorm2d, act: bool) -> Tensor:
    """``silu(bn(x))`` (or ``bn(x)`` when ``act`` is false) in training mode, updating ``bn``'s running
    statistics; ``x`` channels-last (see :func:`fused_norm_applies`)."""
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    return _BatchNormAct.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps, act)


def fused_norm_blocked(device: torch.device, *, channels_last: bool, compiled: bool) -> str | None:
    """Why a training run on ``device`` would not use the kernels (None: it would)."""
    if not TRITON_AVAILABLE:
        return "triton is not installed"
    if device.type != "cuda":
        return "they run on CUDA GPUs only"
    if not channels_last:
        return "they need channels_last=true"
    if compiled:
        return "torch.compile fuses BatchNorm itself"
    return None


def set_fused_norm(model: nn.Module, enabled: bool = True) -> int:
    """Switch every :class:`ConvNormAct` of ``model`` to (or from) these kernels; returns how many."""
    from mobilevit_torch.layers.conv_norm_act import ConvNormAct

    units = [module for module in model.modules() if isinstance(module, ConvNormAct)]
    for unit in units:
        unit.fused_norm = enabled
    return len(units)


# ---- launch geometry ------------------------------------------------------------------------------


def _blocks(channels: int) -> tuple[int, int]:
    """Tile ``[BLOCK_M, BLOCK_C]``: all channels of a row where they fit (contiguous loads), ~4k values."""
    block_c = min(triton.next_power_of_2(channels), 128)
    return max(4096 // block_c, 16), block_c


@functools.cache
def _programs_target(device: torch.device) -> int:
    if device.type != "cuda":
        return 8  # the interpreter: few programs, each a loop
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def _row_split(rows: int, channel_blocks: int, block_m: int, device: torch.device) -> tuple[int, int]:
    """(programs along the rows, rows per program): enough programs to fill the GPU, each a whole
    number of tiles, so the per-program partial results stay few."""
    wanted = max(1, _programs_target(device) // channel_blocks)
    per_program = triton.cdiv(triton.cdiv(rows, wanted), block_m) * block_m
    return triton.cdiv(rows, per_program), per_program


# ---- the autograd function --------------------------------------------------------------------------


class _BatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, act):  # type: ignore[override]
        batch, channels, height, width = x.shape
        rows = batch * height * width
        flat = x.permute(0, 2, 3, 1).view(rows, channels)  # channels-last [B, C, H, W] -> [M, C], a view
        block_m, block_c = _blocks(channels)
        channel_blocks = triton.cdiv(channels, block_c)
        programs, per_program = _row_split(rows, channel_blocks, block_m, x.device)
        f32 = dict(device=x.device, dtype=torch.float32)
        part_mean = torch.empty(programs, channels, **f32)  # [P, C]
        part_m2 = torch.empty(programs, channels, **f32)  # [P, C]
        _stats_kernel[(programs, channel_blocks)](
            flat, part_mean, part_m2, rows, channels, per_program, BLOCK_M=block_m, BLOCK_C=block_c
        )
        mean, invstd, scale, shift = (torch.empty(channels, **f32) for _ in range(4))
        _finalize_kernel[(channel_blocks,)](
            part_mean, part_m2, programs, rows, channels, per_program,
            weight, bias, running_mean, running_var, mean, invstd, scale, shift,
            float(momentum), float(eps), BLOCK_P=32, BLOCK_C=block_c,
        )  # fmt: skip
        out = torch.empty_like(x)  # channels-last like x
        flat_out = out.permute(0, 2, 3, 1).view(rows, channels)  # [B, C, H, W] -> [M, C], a view of out
        _apply_kernel[(triton.cdiv(rows, block_m), channel_blocks)](
            flat, flat_out, scale, shift, rows, channels,
            ACT=act, BLOCK_M=block_m, BLOCK_C=block_c,
        )  # fmt: skip
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.act = act
        ctx.geometry = (rows, channels, block_m, block_c, channel_blocks, programs, per_program)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, bias, mean, invstd = ctx.saved_tensors
        rows, channels, block_m, block_c, channel_blocks, programs, per_program = ctx.geometry
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        flat = x.permute(0, 2, 3, 1).view(rows, channels)  # [B, C, H, W] -> [M, C]
        flat_grad = grad_out.permute(0, 2, 3, 1).view(rows, channels)  # [B, C, H, W] -> [M, C]
        partials = torch.empty(2, programs, channels, device=x.device, dtype=torch.float32)  # [2, P, C]
        _grad_sums_kernel[(programs, channel_blocks)](
            flat, flat_grad, mean, invstd, weight, bias, partials[0], partials[1], rows, channels, per_program,
            ACT=ctx.act, BLOCK_M=block_m, BLOCK_C=block_c,
        )  # fmt: skip
        grad_bias, grad_weight = partials.sum(dim=1)  # [2, P, C] -> [2, C]: sum(dy), sum(dy * xhat)
        grad_x = torch.empty_like(x)
        flat_grad_x = grad_x.permute(0, 2, 3, 1).view(rows, channels)  # [B, C, H, W] -> [M, C], a view of grad_x
        _grad_input_kernel[(triton.cdiv(rows, block_m), channel_blocks)](
            flat, flat_grad, flat_grad_x,
            mean, invstd, weight, bias, grad_bias, grad_weight, rows, channels,
            ACT=ctx.act, BLOCK_M=block_m, BLOCK_C=block_c,
        )  # fmt: skip
        return grad_x, grad_weight.to(weight.dtype), grad_bias.to(bias.dtype), None, None, None, None, None


# ---- the kernels (one program: a [BLOCK_M, BLOCK_C] tile or a run of them) ----------------------------

if TRITON_AVAILABLE:

    # Row counts change with every layer and batch: not specialised on (fewer compiled variants).
    @triton.jit(do_not_specialize=["rows", "per_program"])
    def _stats_kernel(
        x_ptr, mean_ptr, m2_ptr, rows, channels, per_program, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr
    ):
        """Per program, over its ``per_program`` rows: each channel's mean and sum of squared deviations."""
        program = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < channels
        first = program * per_program
        end = tl.minimum(first + per_program, rows)
        count = tl.zeros([BLOCK_C], dtype=tl.float32)
        mean = tl.zeros([BLOCK_C], dtype=tl.float32)
        m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        for start in range(first, end, BLOCK_M):
            row = start + tl.arange(0, BLOCK_M)
            ok = (row < end)[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + row.to(tl.int64)[:, None] * channels + cols[None, :], mask=ok, other=0.0)
            x = x.to(tl.float32)
            n = tl.minimum(end - start, BLOCK_M).to(tl.float32)
            tile_mean = tl.sum(x, axis=0) / n
            deviation = tl.where(ok, x - tile_mean[None, :], 0.0)
            tile_m2 = tl.sum(deviation * deviation, axis=0)
            total = count + n  # Chan et al.: merge (count, mean, m2) with the tile's (n, tile_mean, tile_m2)
            delta = tile_mean - mean
            mean += delta * (n / total)
            m2 += tile_m2 + delta * delta * (count * n / total)
            count = total
        tl.store(mean_ptr + program * channels + cols, mean, mask=col_ok)
        tl.store(m2_ptr + program * channels + cols, m2, mask=col_ok)

    @triton.jit(do_not_specialize=["programs", "rows", "per_program"])
    def _finalize_kernel(
        part_mean_ptr, part_m2_ptr, programs, rows, channels, per_program,
        weight_ptr, bias_ptr, running_mean_ptr, running_var_ptr, mean_ptr, invstd_ptr, scale_ptr, shift_ptr,
        momentum, eps, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """Merge the programs' partial statistics; the affine as scale/shift; update the running statistics."""
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < channels
        total = tl.zeros([BLOCK_C], dtype=tl.float32)
        for start in range(0, programs, BLOCK_P):
            part = start + tl.arange(0, BLOCK_P)
            ok = (part < programs)[:, None] & col_ok[None, :]
            n = tl.minimum(rows - part * per_program, per_program).to(tl.float32)
            part_mean = tl.load(part_mean_ptr + part[:, None] * channels + cols[None, :], mask=ok, other=0.0)
            total += tl.sum(tl.where(ok, part_mean * n[:, None], 0.0), axis=0)
        mean = total / rows
        m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        for start in range(0, programs, BLOCK_P):
            part = start + tl.arange(0, BLOCK_P)
            ok = (part < programs)[:, None] & col_ok[None, :]
            n = tl.minimum(rows - part * per_program, per_program).to(tl.float32)
            offsets = part[:, None] * channels + cols[None, :]
            part_mean = tl.load(part_mean_ptr + offsets, mask=ok, other=0.0)
            part_m2 = tl.load(part_m2_ptr + offsets, mask=ok, other=0.0)
            delta = part_mean - mean[None, :]
            m2 += tl.sum(tl.where(ok, part_m2 + delta * delta * n[:, None], 0.0), axis=0)
        invstd = 1.0 / tl.sqrt(m2 / rows + eps)
        weight = tl.load(weight_ptr + cols, mask=col_ok, other=1.0).to(tl.float32)
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(mean_ptr + cols, mean, mask=col_ok)
        tl.store(invstd_ptr + cols, invstd, mask=col_ok)
        tl.store(scale_ptr + cols, weight * invstd, mask=col_ok)
        tl.store(shift_ptr + cols, bias - mean * weight * invstd, mask=col_ok)
        running_mean = tl.load(running_mean_ptr + cols, mask=col_ok, other=0.0)
        running_var = tl.load(running_var_ptr + cols, mask=col_ok, other=0.0)
        unbiased = m2 / (rows - 1)
        tl.store(running_mean_ptr + cols, (1.0 - momentum) * running_mean + momentum * mean, mask=col_ok)
        tl.store(running_var_ptr + cols, (1.0 - momentum) * running_var + momentum * unbiased, mask=col_ok)

    @triton.jit(do_not_specialize=["rows"])
    def _apply_kernel(
        x_ptr, out_ptr, scale_ptr, shift_ptr, rows, channels,
        ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        ok = (row < rows)[:, None] & (cols < channels)[None, :]
        offsets = row.to(tl.int64)[:, None] * channels + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + cols, mask=cols < channels, other=0.0)
        shift = tl.load(shift_ptr + cols, mask=cols < channels, other=0.0)
        y = x * scale[None, :] + shift[None, :]
        if ACT:
            y = y * tl.sigmoid(y)
        tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _grad_of_norm(x, grad, mean, invstd, weight, bias, ACT: tl.constexpr):
        """(normalised x, gradient at BatchNorm's output): SiLU's derivative recomputed from x."""
        x_hat = (x - mean[None, :]) * invstd[None, :]
        if ACT:
            y = x_hat * weight[None, :] + bias[None, :]
            sig = tl.sigmoid(y)
            grad = grad * sig * (1.0 + y * (1.0 - sig))  # d/dy [y * sigmoid(y)]
        return x_hat, grad

    @triton.jit(do_not_specialize=["rows", "per_program"])
    def _grad_sums_kernel(
        x_ptr, grad_ptr, mean_ptr, invstd_ptr, weight_ptr, bias_ptr, sum_dy_ptr, sum_dy_xhat_ptr,
        rows, channels, per_program, ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """Per program: sum(dy) and sum(dy * x_hat) per channel over its rows (dy: gradient at BatchNorm's output)."""
        program = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < channels
        mean = tl.load(mean_ptr + cols, mask=col_ok, other=0.0)
        invstd = tl.load(invstd_ptr + cols, mask=col_ok, other=0.0)
        weight = tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        first = program * per_program
        end = tl.minimum(first + per_program, rows)
        sum_dy = tl.zeros([BLOCK_C], dtype=tl.float32)
        sum_dy_xhat = tl.zeros([BLOCK_C], dtype=tl.float32)
        for start in range(first, end, BLOCK_M):
            row = start + tl.arange(0, BLOCK_M)
            ok = (row < end)[:, None] & col_ok[None, :]
            offsets = row.to(tl.int64)[:, None] * channels + cols[None, :]
            x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            grad = tl.load(grad_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            x_hat, dy = _grad_of_norm(x, grad, mean, invstd, weight, bias, ACT)
            dy = tl.where(ok, dy, 0.0)
            sum_dy += tl.sum(dy, axis=0)
            sum_dy_xhat += tl.sum(dy * x_hat, axis=0)
        tl.store(sum_dy_ptr + program * channels + cols, sum_dy, mask=col_ok)
        tl.store(sum_dy_xhat_ptr + program * channels + cols, sum_dy_xhat, mask=col_ok)

    @triton.jit(do_not_specialize=["rows"])
    def _grad_input_kernel(
        x_ptr, grad_ptr, out_ptr, mean_ptr, invstd_ptr, weight_ptr, bias_ptr, sum_dy_ptr, sum_dy_xhat_ptr,
        rows, channels, ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """dx = weight * invstd * (dy - (sum(dy) + x_hat * sum(dy * x_hat)) / M)."""
        row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < channels
        ok = (row < rows)[:, None] & col_ok[None, :]
        offsets = row.to(tl.int64)[:, None] * channels + cols[None, :]
        mean = tl.load(mean_ptr + cols, mask=col_ok, other=0.0)
        invstd = tl.load(invstd_ptr + cols, mask=col_ok, other=0.0)
        weight = tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        mean_dy = tl.load(sum_dy_ptr + cols, mask=col_ok, other=0.0) / rows
        mean_dy_xhat = tl.load(sum_dy_xhat_ptr + cols, mask=col_ok, other=0.0) / rows
        x = tl.load(x_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        grad = tl.load(grad_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
        x_hat, dy = _grad_of_norm(x, grad, mean, invstd, weight, bias, ACT)
        dx = (weight * invstd)[None, :] * (dy - mean_dy[None, :] - x_hat * mean_dy_xhat[None, :])
        tl.store(out_ptr + offsets, dx.to(out_ptr.dtype.element_ty), mask=ok)
