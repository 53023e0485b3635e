"""The Triton inference kernels against the folded model's own modules: the one-kernel MV2 block
(``blocks/mv2_kernel.py``) and the dense 3x3 convolutions (``layers/conv_kernel.py``).

On a GPU the kernels run compiled, in this process. Without one, a subprocess runs the same checks
with ``TRITON_INTERPRET=1`` (Triton's interpreter on CPU tensors), so CI checks the arithmetic too,
and Triton's compiler builds the kernels for an H100 to check that they lower and fit in shared memory.
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
from mobilevit_torch.blocks import InvertedResidual, MobileViTBlock, set_mv2_kernel
from mobilevit_torch.blocks.mv2_kernel import MAX_BLOCK_E, mv2_kernel_applies
from mobilevit_torch.layers import ConvNormAct
from mobilevit_torch.layers.conv_kernel import MAX_BLOCK_K, MAX_BLOCK_N, conv_kernel_applies, set_conv_kernels
from mobilevit_torch.layers.triton_support import INTERPRET, MAX_TILE_PIXELS, TRITON_AVAILABLE, tile_pixels
from mobilevit_torch.models.fuse import fuse_for_inference, set_inference_kernels

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


# (inputs' channels, out, stride, SiLU, [B, H, W], NCHW inputs): the stem (3 channels, stride 2, the image
# as given), a local convolution (80: two channel chunks), a fusion convolution over two maps of 48.
CONVS = [
    ((3,), 16, 2, True, (2, 9, 10), True),
    ((80,), 80, 1, True, (1, 5, 6), False),
    ((48, 48), 48, 1, True, (2, 4, 3), False),
    ((24,), 40, 1, False, (1, 3, 3), False),
]


def folded_unit(in_chs: int, out_chs: int, stride: int, act: bool) -> nn.Module:
    generator = torch.Generator().manual_seed(2)
    unit = ConvNormAct(in_chs, out_chs, kernel_size=3, stride=stride, apply_act=act)
    with torch.no_grad():
        unit.conv.weight.copy_(torch.randn(unit.conv.weight.shape, generator=generator) * 0.1)
        unit.bn.weight.copy_(torch.rand(out_chs, generator=generator) + 0.5)
        unit.bn.bias.copy_(torch.randn(out_chs, generator=generator))
        unit.bn.running_mean.copy_(torch.randn(out_chs, generator=generator) * 0.5)
        unit.bn.running_var.copy_(torch.rand(out_chs, generator=generator) + 0.5)
    return fuse_for_inference(unit.eval())


def check_conv(
    device: str, splits: tuple, out_chs: int, stride: int, act: bool, size: tuple, nchw: bool, dtype: torch.dtype
) -> None:
    from mobilevit_torch.layers.conv_kernel import conv3x3_forward, pack_conv

    unit = folded_unit(sum(splits), out_chs, stride, act).to(device)
    batch, height, width = size
    generator = torch.Generator().manual_seed(3)
    inputs = [torch.randn(batch, chs, height, width, generator=generator).to(device) for chs in splits]
    if not nchw:
        inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = unit(torch.cat(inputs, dim=1))  # float32 through PyTorch's convolution
        pack_conv(unit, splits)
        inputs = [x.to(dtype) for x in inputs]
        assert conv_kernel_applies(inputs[0], unit)
        out = conv3x3_forward(unit, *inputs)
    assert out.shape == expected.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    scale = expected.abs().max().item()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2 * scale)
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
    """A whole folded XXS, every kernel on, against PyTorch's convolutions: NCHW images whose maps are
    whole patches, and a size whose maps are not (the MobileViT blocks' resized path)."""
    torch.manual_seed(0)
    model = fuse_for_inference(mvt.create_model("mobilevit_xxs", num_classes=5).eval()).to(device)
    for size in ((2, 3, 64, 72), (1, 3, 70, 66)):
        images = torch.randn(size, device=device)
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            expected = model(images)
            # Table 4: 7 MV2 blocks (1 + 3 + 1 + 1 + 1); the stem and 3 MobileViT blocks' two 3x3 convolutions.
            assert set_inference_kernels(model) == 7 + 1 + 3 * 2
            out = model(images)
            assert set_inference_kernels(model, enabled=False) == 14
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def run_checks(device: str) -> None:
    for in_chs, out_chs, stride, ratio, size in BLOCKS:
        for dtype in (torch.float32, torch.bfloat16):
            check_block(device, in_chs, out_chs, stride, ratio, size, dtype)
    for conv in CONVS:
        for dtype in (torch.float32, torch.bfloat16):
            check_conv(device, *conv, dtype)
    check_weights_follow_the_module(device)
    check_model(device)


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests below run the compiled kernel")
def test_kernel_in_triton_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_inference_kernels"],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all inference-kernel checks passed" in result.stdout


H100_SHARED_BYTES = 227 * 1024  # the most one block may use on sm_90


def compile_for_h100(kernel, constants: dict, pointers: dict[str, str]) -> None:
    """Triton's compiler and ptxas (shipped with Triton) build ``kernel`` for sm_90, GPU or not: it
    lowers, and its shared memory fits one H100 block (a launch would raise OutOfResources otherwise)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*fp32")
        else:
            signature[name] = "i32"
    compiled = compile(
        ASTSource(fn=kernel, signature=signature, constexprs=constants),
        target=GPUTarget("cuda", 90, 32),
        options={"num_stages": 1},
    )
    assert compiled.asm["cubin"]
    assert compiled.metadata.shared <= H100_SHARED_BYTES, (constants, compiled.metadata.shared)


@needs_triton
@pytest.mark.skipif(INTERPRET, reason="the interpreter does not compile")
@pytest.mark.parametrize(
    ("variant", "dtype", "widest_only"),
    [("xxs", torch.bfloat16, False), ("s", torch.float32, True)],
    ids=["xxs-bf16", "s-fp32-widest"],
)
def test_kernels_compile_for_an_h100_and_fit(variant: str, dtype: torch.dtype, widest_only: bool) -> None:
    """Every kernel shape of XXS in bfloat16 (the benchmarked case; the stem reads float32 images),
    and the widest MV2 block and fusion convolution of S in float32 (the most shared memory), with
    the tile sizes the launchers pick first. About 40 s with Triton's cache cold."""
    from mobilevit_torch.blocks.mv2_kernel import _mv2_kernel
    from mobilevit_torch.layers.conv_kernel import _conv3x3_kernel

    model = fuse_for_inference(mvt.create_model(f"mobilevit_{variant}", num_classes=5))
    set_inference_kernels(model)
    blocks = {
        (b.mv2_w_expand.shape, b.mv2_w_project.shape, b.depthwise.conv.stride, b.use_residual): b
        for b in model.modules()
        if isinstance(b, InvertedResidual)
    }
    units = {
        (u.conv3x3_weight.shape, u.conv.stride, u._conv3x3_splits[0]): u
        for u in model.modules()
        if isinstance(u, ConvNormAct) and u.conv_kernel
    }
    if widest_only:
        blocks = {"widest": max(blocks.values(), key=lambda b: b.mv2_w_expand.shape[1])}
        units = {"widest": max(units.values(), key=lambda u: u.conv3x3_weight.shape[1])}
    pointer = "*bf16" if dtype == torch.bfloat16 else "*fp32"
    common = dict(PRECISION="ieee" if dtype == torch.bfloat16 else "tf32", FAST_SILU=dtype == torch.bfloat16)
    for block in blocks.values():
        (cin, hidden), cout = block.mv2_w_expand.shape, block.mv2_w_project.shape[1]
        constants = dict(
            STRIDE=block.depthwise.conv.stride[0], RESIDUAL=block.use_residual, CIN=cin, HIDDEN=hidden,
            BLOCK_E=min(hidden, MAX_BLOCK_E), COUT=cout, BLOCK_P=tile_pixels(max(cin, cout), dtype), **common,
        )  # fmt: skip
        compile_for_h100(_mv2_kernel, constants, {"x_ptr": pointer, "out_ptr": pointer})
    for unit in units.values():
        splits = unit._conv3x3_splits
        k1 = max(16, 1 << (splits[0] - 1).bit_length())
        k_all, cout = unit.conv3x3_weight.shape[1:]
        constants = dict(
            STRIDE=unit.conv.stride[0], K1=k1, K2=k_all - k1, COUT=cout, BLOCK_N=min(cout, MAX_BLOCK_N),
            BLOCK_K1=min(k1, MAX_BLOCK_K), BLOCK_K2=min(max(k_all - k1, 16), MAX_BLOCK_K), ACT=True,
            BLOCK_P=MAX_TILE_PIXELS, **common,
        )  # fmt: skip
        first = "*fp32" if splits[0] == 3 else pointer  # the stem reads the float32 image under autocast
        compile_for_h100(_conv3x3_kernel, constants, {"x1_ptr": first, "x2_ptr": pointer, "out_ptr": pointer})


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("splits", "out_chs", "stride", "act", "size", "nchw"), CONVS)
def test_conv_on_gpu(splits: tuple, out_chs: int, stride: int, act: bool, size: tuple, nchw: bool, dtype) -> None:
    check_conv("cuda", splits, out_chs, stride, act, size, nchw, dtype)


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
    set_inference_kernels(model)
    out = GraphedForward(model, torch.bfloat16)(images).float()
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


@needs_cuda
def test_compiled_inference_on_gpu() -> None:
    """Under ``torch.compile`` the kernels are operators of the graph (no graph break)."""
    torch.manual_seed(0)
    model = fuse_for_inference(mvt.create_model("mobilevit_xxs", num_classes=5).eval()).cuda()
    images = torch.randn(4, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected = model(images).float()
        set_inference_kernels(model)
        out = torch.compile(model, fullgraph=True)(images).float()
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


def test_only_folded_models_take_the_switch() -> None:
    model = mvt.create_model("mobilevit_xxs", num_classes=3)
    for switch in (set_mv2_kernel, set_conv_kernels, set_inference_kernels):
        with pytest.raises(ValueError, match="fold BatchNorm first"):
            switch(model)
    assert set_inference_kernels(model, enabled=False) == 14  # switching off is always allowed


def test_the_switch_changes_nothing_where_the_kernels_do_not_apply() -> None:
    model = fuse_for_inference(mvt.create_model("mobilevit_xxs", num_classes=3).eval())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        set_inference_kernels(model)
        block = next(m for m in model.modules() if isinstance(m, InvertedResidual))
        unit = next(m.conv_local for m in model.modules() if isinstance(m, MobileViTBlock))
        x = torch.randn(1, 16, 8, 8)
        assert not mv2_kernel_applies(x, block)  # NCHW
        if not INTERPRET:
            x = x.contiguous(memory_format=torch.channels_last)
            assert not mv2_kernel_applies(x, block)  # CPU tensors: the ordinary modules
            assert not conv_kernel_applies(torch.randn(1, 48, 8, 8), unit)
            torch.testing.assert_close(model(images), expected, rtol=0, atol=0)
    assert not mv2_kernel_applies(x.requires_grad_(), block)  # autograd: inference only
    assert not conv_kernel_applies(torch.randn(1, 48, 8, 8, requires_grad=True), unit)
    # The packed weights are buffers that state_dict leaves out: checkpoints stay as they were.
    assert not any("mv2_" in key or "conv3x3" in key for key in model.state_dict())


if __name__ == "__main__":  # the interpreter run (TRITON_INTERPRET=1 must be set before triton is imported)
    run_checks("cuda" if torch.cuda.is_available() else "cpu")
    print("all inference-kernel checks passed")
