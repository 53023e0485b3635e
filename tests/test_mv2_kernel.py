"""The one-kernel MV2 block (``blocks/mv2_kernel.py``) against the folded block's own modules.

On a GPU the kernel runs compiled, in this process. Without one, a subprocess runs the same checks
with ``TRITON_INTERPRET=1`` (Triton's interpreter on CPU tensors), so CI checks the arithmetic too,
and Triton's compiler builds the kernel for an H100 to check that it lowers and fits in shared memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import mobilevit_torch as mvt
from mobilevit_torch.blocks import InvertedResidual, set_mv2_kernel
from mobilevit_torch.blocks.mv2_kernel import MAX_BLOCK_E, mv2_kernel_applies
from mobilevit_torch.layers.triton_support import INTERPRET, TRITON_AVAILABLE, tile_pixels
from mobilevit_torch.models.fuse import fuse_for_inference

# (in, out, stride, expansion, [B, H, W]): residual and not, stride 2 on odd and even sizes, widths that
# are not powers of two, a hidden width of several chunks (80 * 4 = 320: five of 64), a lone pixel.
BLOCKS = [
    (16, 16, 1, 2, (2, 5, 7)),
    (16, 24, 2, 2, (2, 9, 8)),
    (24, 48, 2, 4, (1, 6, 7)),
    (80, 80, 1, 4, (1, 4, 5)),
    (48, 64, 2, 2, (3, 1, 1)),
]
needs_triton = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not (TRITON_AVAILABLE and torch.cuda.is_available()), reason="needs a CUDA GPU")


def folded_block(in_chs: int, out_chs: int, stride: int, ratio: float, seed: int = 0) -> nn.Module:
    """An MV2 block with BatchNorm statistics far from the identity, folded for inference."""
    generator = torch.Generator().manual_seed(seed)
    block = InvertedResidual(in_chs, out_chs, stride=stride, expand_ratio=ratio)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * module.weight.std())
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator))
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    return fuse_for_inference(block.eval())


def check_block(
    device: str, in_chs: int, out_chs: int, stride: int, ratio: float, size: tuple, dtype: torch.dtype
) -> None:
    block = folded_block(in_chs, out_chs, stride, ratio).to(device)
    batch, height, width = size
    x = torch.randn(batch, in_chs, height, width, generator=torch.Generator().manual_seed(1))
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = block(x)  # float32 through PyTorch's convolutions
        set_mv2_kernel(block)
        assert mv2_kernel_applies(x.to(dtype), block)
        out = block(x.to(dtype))
        set_mv2_kernel(block, enabled=False)
    assert out.shape == expected.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    # bfloat16: the input and both products' operands rounded to 8 bits (the hidden map stays float32).
    tol = (
        dict(rtol=1e-5, atol=1e-5)
        if dtype == torch.float32
        else dict(rtol=3e-2, atol=3e-2 * expected.abs().max().item())
    )
    torch.testing.assert_close(out.float(), expected, **tol)


def check_weights_follow_the_module(device: str) -> None:
    """New weights loaded into a switched-on block are used at once (the kernel's copies are remade)."""
    block, other = (folded_block(16, 16, 1, 2, seed=seed).to(device) for seed in (0, 1))
    x = torch.randn(1, 16, 4, 4, device=device).contiguous(memory_format=torch.channels_last)
    set_mv2_kernel(block)
    with torch.no_grad():
        before = block(x)
        block.load_state_dict(other.state_dict())
        after = block(x)
        expected = other(x)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)


def check_model(device: str) -> None:
    """A whole folded XXS: every MV2 block as the kernel against PyTorch's convolutions."""
    torch.manual_seed(0)
    model = fuse_for_inference(mvt.create_model("mobilevit_xxs", num_classes=5).eval()).to(device)
    images = torch.randn(2, 3, 64, 72, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = model(images)
        assert set_mv2_kernel(model) == 7  # Table 4: 1 + 3 + 1 + 1 + 1
        out = model(images)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def run_checks(device: str) -> None:
    for in_chs, out_chs, stride, ratio, size in BLOCKS:
        for dtype in (torch.float32, torch.bfloat16):
            check_block(device, in_chs, out_chs, stride, ratio, size, dtype)
    check_weights_follow_the_module(device)
    check_model(device)


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests below run the compiled kernel")
def test_kernel_in_triton_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_mv2_kernel"],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all mv2-kernel checks passed" in result.stdout


H100_SHARED_BYTES = 227 * 1024  # the most one block may use on sm_90


@needs_triton
@pytest.mark.skipif(INTERPRET, reason="the interpreter does not compile")
@pytest.mark.parametrize(
    ("variant", "dtype", "widest_only"),
    [("xxs", torch.bfloat16, False), ("s", torch.float32, True)],
    ids=["xxs-bf16", "s-fp32-widest"],
)
def test_kernel_compiles_for_an_h100_and_fits(variant: str, dtype: torch.dtype, widest_only: bool) -> None:
    """Triton's compiler and ptxas (shipped with Triton) build the kernel for sm_90, GPU or not, with
    the tile sizes the launcher picks: every block shape of XXS in bfloat16 (the benchmarked case), and
    the widest block of S in float32 (the most shared memory). It lowers, and its shared memory fits
    one H100 block (a launch would raise OutOfResources otherwise). About 30 s with Triton's cache cold."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from mobilevit_torch.blocks.mv2_kernel import _mv2_kernel

    model = mvt.create_model(f"mobilevit_{variant}", num_classes=5)
    blocks = {
        (b.expand.conv.in_channels, b.expand.conv.out_channels, b.project.conv.out_channels, b.use_residual): b
        for b in model.modules()
        if isinstance(b, InvertedResidual)
    }
    if widest_only:
        blocks = {"widest": max(blocks.values(), key=lambda b: b.expand.conv.out_channels)}
    pointer = "*bf16" if dtype == torch.bfloat16 else "*fp32"
    for block in blocks.values():
        block = fuse_for_inference(block)
        set_mv2_kernel(block)
        (cin, hidden), cout = block.mv2_w_expand.shape, block.mv2_w_project.shape[1]
        constants = dict(
            STRIDE=block.depthwise.conv.stride[0], RESIDUAL=block.use_residual, CIN=cin, HIDDEN=hidden,
            BLOCK_E=min(hidden, MAX_BLOCK_E), COUT=cout, BLOCK_P=tile_pixels(max(cin, cout), dtype),
            PRECISION="ieee" if dtype == torch.bfloat16 else "tf32", FAST_SILU=dtype == torch.bfloat16,
        )  # fmt: skip
        signature = {}
        for name in _mv2_kernel.arg_names:
            if name in constants:
                signature[name] = "constexpr"
            elif name in ("x_ptr", "out_ptr"):
                signature[name] = pointer
            else:
                signature[name] = "*fp32" if name.endswith("_ptr") else "i32"
        compiled = compile(
            ASTSource(fn=_mv2_kernel, signature=signature, constexprs=constants),
            target=GPUTarget("cuda", 90, 32),
            options={"num_stages": 1},
        )
        assert compiled.asm["cubin"]
        assert compiled.metadata.shared <= H100_SHARED_BYTES, (constants, compiled.metadata.shared)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("in_chs", "out_chs", "stride", "ratio", "size"), BLOCKS)
def test_block_on_gpu(in_chs: int, out_chs: int, stride: int, ratio: float, size: tuple, dtype: torch.dtype) -> None:
    check_block("cuda", in_chs, out_chs, stride, ratio, size, dtype)


@needs_cuda
def test_model_and_weights_on_gpu() -> None:
    check_weights_follow_the_module("cuda")
    check_model("cuda")


@needs_cuda
def test_graphed_bf16_inference_on_gpu() -> None:
    """What the benchmark's ``bf16+cl+graph`` row runs: autocast, inference_mode, a captured CUDA graph."""
    from mobilevit_torch.graphed import GraphedForward

    torch.manual_seed(0)
    model = fuse_for_inference(mvt.create_model("mobilevit_xxs", num_classes=5).eval()).cuda()
    images = torch.randn(8, 3, 256, 256, device="cuda").contiguous(memory_format=torch.channels_last)
    expected = GraphedForward(model, torch.bfloat16)(images).float()
    set_mv2_kernel(model)
    out = GraphedForward(model, torch.bfloat16)(images).float()
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


@needs_cuda
def test_compiled_inference_on_gpu() -> None:
    """Under ``torch.compile`` the kernel is an operator of the graph (no graph break), as fast paths go."""
    torch.manual_seed(0)
    model = fuse_for_inference(mvt.create_model("mobilevit_xxs", num_classes=5).eval()).cuda()
    images = torch.randn(4, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected = model(images).float()
        set_mv2_kernel(model)
        out = torch.compile(model, fullgraph=True)(images).float()
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


def test_only_folded_models_take_the_switch() -> None:
    model = mvt.create_model("mobilevit_xxs", num_classes=3)
    with pytest.raises(ValueError, match="fold BatchNorm first"):
        set_mv2_kernel(model)
    assert set_mv2_kernel(model, enabled=False) == 7  # switching off is always allowed


def test_the_switch_changes_nothing_where_the_kernel_does_not_apply() -> None:
    model = fuse_for_inference(mvt.create_model("mobilevit_xxs", num_classes=3).eval())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        set_mv2_kernel(model)
        block = next(m for m in model.modules() if isinstance(m, InvertedResidual))
        x = torch.randn(1, 16, 8, 8)
        assert not mv2_kernel_applies(x, block)  # NCHW
        if not INTERPRET:
            x = x.contiguous(memory_format=torch.channels_last)
            assert not mv2_kernel_applies(x, block)  # CPU tensors: the ordinary modules
            torch.testing.assert_close(model(images), expected, rtol=0, atol=0)
    assert not mv2_kernel_applies(x.requires_grad_(), block)  # autograd: inference only


if __name__ == "__main__":  # the interpreter run (TRITON_INTERPRET=1 must be set before triton is imported)
    run_checks("cuda" if torch.cuda.is_available() else "cpu")
    print("all mv2-kernel checks passed")
