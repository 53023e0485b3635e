"""What the Triton kernels share: whether Triton is here, the interpreter switch, launching with a
tile size that fits the GPU, and the in-kernel helpers (products, SiLU, the 3x3 taps).

Triton is optional: without it every kernel's switch is accepted and nothing takes the kernels. With
``TRITON_INTERPRET=1`` set before import the kernels run in Triton's interpreter on CPU tensors,
which is how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

try:
    import triton
    import triton.language as tl
except ImportError:  # the kernels are optional: every switch then leaves PyTorch's modules in charge
    triton = None

MIN_TILE_PIXELS = 16
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # Triton reads it once, when the kernels are defined
TRITON_AVAILABLE = triton is not None
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def on_kernel_device(x: Tensor) -> bool:
    """CUDA tensors, or CPU tensors in Triton's interpreter."""
    return TRITON_AVAILABLE and (x.is_cuda or (INTERPRET and x.is_cpu))


def compute_dtype(x: Tensor) -> torch.dtype:
    """Autocast's dtype under CUDA autocast (as the convolutions would compute), else ``x``'s."""
    return torch.get_autocast_dtype("cuda") if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype


def inference_only(x: Tensor, module: nn.Module, weight: Tensor) -> bool:
    """No autograd, training, tracing or exporting: where the inference kernels may stand in."""
    return (
        not module.training
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.jit.is_tracing()
        and not torch.compiler.is_exporting()
    )


def weights_version(params: list[Tensor]) -> tuple:
    """Identifies the values of ``params``: storage and version counter (weights made under
    inference_mode have no version counter, so there the storage alone)."""
    return tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in params)


def repack_if_changed(module: nn.Module, params: list[Tensor], pack: Callable[[nn.Module], None]) -> None:
    """Call ``pack(module)`` again when ``params`` changed since it last ran (eager calls only: under
    ``torch.compile`` the packed buffers are what the graph was made with)."""
    if not torch.compiler.is_compiling() and module.__dict__.get("_kernel_version") != weights_version(params):
        pack(module)


def store_packed(module: nn.Module, names: tuple[str, ...], tensors: tuple[Tensor, ...], params: list[Tensor]) -> None:
    """Keep a kernel's packed weights on ``module`` as non-persistent buffers (they move with
    ``module.to(...)``; ``state_dict`` is unchanged), made from the present values of ``params``."""
    for name, tensor in zip(names, tensors, strict=True):
        module.register_buffer(name, tensor, persistent=False)
    module.__dict__["_kernel_version"] = weights_version(params)


def drop_packed(module: nn.Module, names: tuple[str, ...]) -> None:
    for name in names:
        module._buffers.pop(name, None)


@torch.no_grad()
def padded(values: Tensor, *shape: int) -> Tensor:
    """``values`` as float32 in the top-left corner of a zero tensor of ``shape`` (padded widths)."""
    buffer = torch.zeros(shape, device=values.device, dtype=torch.float32)
    buffer[tuple(slice(0, n) for n in values.shape)] = values.float()
    return buffer


def padded_width(channels: int) -> int:
    """The next power of two, at least 16 (``tl.dot``'s smallest operand side)."""
    return max(16, 1 << (channels - 1).bit_length())


def dot_precision(x: Tensor) -> str:
    """``tl.dot``'s input precision: TF32 for float32 maps where cuDNN's convolutions would use it."""
    return "tf32" if x.is_cuda and x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def fast_silu(x: Tensor) -> bool:
    """SiLU by ``tanh.approx`` (see :func:`silu`) for 16-bit maps; the interpreter runs no GPU assembly."""
    return x.dtype != torch.float32 and not INTERPRET


MAX_TILE_PIXELS = 64
# Rows of the widest padded input or output of up to this many bytes take MAX_TILE_PIXELS pixels per
# program, twice as wide rows half as many: Triton's shared memory grows with BLOCK_P x that width
# (H100, sm_90, the MV2 kernel: 90 KiB for XXS's widest block in bfloat16 at 64 pixels; S's widest
# in float32 108-143 KiB at 16 pixels).
_ROW_BYTES = 256


def tile_pixels(widest: int, dtype: torch.dtype) -> int:
    """The first ``BLOCK_P`` to try for maps whose widest padded row has ``widest`` channels."""
    row_bytes = widest * torch.finfo(dtype).bits // 8
    return max(MIN_TILE_PIXELS, MAX_TILE_PIXELS * _ROW_BYTES // max(row_bytes, _ROW_BYTES))


_TILE_PIXELS: dict[tuple, int] = {}  # (kernel, shape key) -> output pixels per program that launched
_FORCED: list[tuple[int, int]] = []  # (BLOCK_P, num_warps) for every launch: benchmarks/kernel_tiles.py
NUM_WARPS = 4


@contextlib.contextmanager
def forced_tiles(block_p: int, num_warps: int) -> Iterator[None]:
    """Launch every kernel with these tiles inside the block (no fallback: ``OutOfResources`` is raised).
    For measuring tile sizes against each other; the launchers' own choice is :func:`tile_pixels`."""
    _FORCED.append((block_p, num_warps))
    try:
        yield
    finally:
        _FORCED.pop()


def launch(kernel: Callable, key: tuple, pixels: int, tile_pixels: int, grid_rest: tuple, *args, **constants) -> None:
    """``kernel[(cdiv(pixels, BLOCK_P), *grid_rest)](*args, BLOCK_P=..., **constants)`` through
    ``wrap_triton`` (so ``torch.compile`` puts it in its graph). ``tile_pixels`` is the first
    ``BLOCK_P`` tried; a GPU with less shared memory per block than it needs (``OutOfResources``)
    gets half as many, down to 16, remembered per ``key``. Without software pipelining: the kernels'
    loads are mostly cache hits, and pipelining them would only add shared memory."""
    key = (kernel, *key)
    while True:
        block_p, num_warps = _FORCED[-1] if _FORCED else (_TILE_PIXELS.get(key, tile_pixels), NUM_WARPS)
        try:
            torch.library.wrap_triton(kernel)[(triton.cdiv(pixels, block_p), *grid_rest)](
                *args, BLOCK_P=block_p, num_warps=num_warps, num_stages=1, **constants
            )
            if not _FORCED:
                _TILE_PIXELS[key] = block_p
            return
        except triton.runtime.errors.OutOfResources:
            if _FORCED or block_p <= MIN_TILE_PIXELS:
                raise
            _TILE_PIXELS[key] = block_p // 2


if TRITON_AVAILABLE:
    INTERPRETED = tl.constexpr(INTERPRET)  # a compile-time constant inside the kernels

    @triton.jit
    def dot(a, b, PRECISION: tl.constexpr):
        """``a @ b`` accumulated in float32. Triton's interpreter multiplies 16-bit floats wrongly (3.8:
        their bit patterns as numbers), so there the operands, already rounded, are widened first:
        the same products, summed in another order."""
        if INTERPRETED:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def silu(h, FAST: tl.constexpr):
        """``h * sigmoid(h)``. ``FAST``: as ``h * (1 + tanh(h / 2)) / 2`` with the GPU's one-instruction
        ``tanh.approx`` (relative error about 2^-11, below a 16-bit map's rounding) instead of an
        exponential and a division: these special-function instructions run at 1/16 of the arithmetic
        rate on an H100, and the MV2 kernel evaluates SiLU nine times per hidden value."""
        if FAST:
            half = 0.5 * h
            tanh = tl.inline_asm_elementwise(
                "tanh.approx.f32 $0, $1;", "=r,r", [half], dtype=tl.float32, is_pure=True, pack=1
            )
            return half + half * tanh
        return h * tl.sigmoid(h)

    @triton.jit
    def output_pixels(BLOCK_P: tl.constexpr, pixels, out_height, out_width):
        """This program's output pixels: (index into ``[B, OH, OW]``, in range, sample, row, column)."""
        pixel = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        sample = pixel // (out_height * out_width)
        return pixel, pixel < pixels, sample, (pixel // out_width) % out_height, pixel % out_width

    @triton.jit
    def tap(out_row, out_col, pixel_ok, height, width, TAP: tl.constexpr, STRIDE: tl.constexpr):
        """The input pixel under tap ``TAP`` (0-8, row-major) of a 3x3 window with padding 1: (row,
        column, inside the image; outside, the convolution reads its zero padding)."""
        row = out_row * STRIDE + (TAP // 3 - 1)
        col = out_col * STRIDE + (TAP % 3 - 1)
        return row, col, pixel_ok & (row >= 0) & (row < height) & (col >= 0) & (col < width)
