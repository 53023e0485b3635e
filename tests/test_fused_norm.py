"""The fused BatchNorm + SiLU training kernels (``layers/fused_norm.py``) against ``nn.BatchNorm2d`` + SiLU.

On a GPU the kernels run compiled, in this process. Without one, a subprocess runs the same checks
with ``TRITON_INTERPRET=1`` (Triton's interpreter on CPU tensors), so CI checks the arithmetic too.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobilevit_torch as mvt
from mobilevit_torch.layers import ConvNormAct
from mobilevit_torch.layers.fused_norm import fused_norm_applies, set_fused_norm
from mobilevit_torch.layers.triton_support import INTERPRET, TRITON_AVAILABLE
from tests.train_helpers import check_switch_is_off

# ([B, C, H, W], SiLU after BatchNorm): rows not a whole number of tiles, channels not a power of two,
# several programs per channel block (the merge of partial statistics), more channels than one block.
SHAPES = [((2, 24, 5, 7), True), ((3, 80, 8, 8), False), ((4, 16, 32, 32), True), ((1, 200, 3, 3), True)]
DTYPES = [torch.float32, torch.bfloat16]
needs_triton = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not (TRITON_AVAILABLE and torch.cuda.is_available()), reason="needs a CUDA GPU")


def check_unit(device: str, shape: tuple[int, int, int, int], act: bool, dtype: torch.dtype) -> None:
    """One training step of a ConvNormAct's BatchNorm + SiLU, fused against PyTorch's, from the same state."""
    generator = torch.Generator().manual_seed(0)
    channels = shape[1]
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=generator))
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    unit = ConvNormAct(channels, channels, apply_act=act)
    unit.bn = bn
    unit = unit.to(device).train()
    reference = copy.deepcopy(unit)
    unit.fused_norm = True
    # A large offset against a small spread: single-pass variance formulas lose it, Chan's merge does not.
    x = torch.randn(shape, generator=generator) * 0.5 + 4.0
    x = x.to(device, dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    x_ref = x.detach().float().requires_grad_()
    grad = torch.randn(shape, generator=generator).to(device, dtype).contiguous(memory_format=torch.channels_last)

    assert fused_norm_applies(x, unit.bn)
    out = unit.norm_act(x)
    out_ref = reference.norm_act(x_ref)
    out.backward(grad)
    out_ref.backward(grad.float())

    exact = dtype == torch.float32
    tol = dict(rtol=1e-5, atol=1e-5) if exact else dict(rtol=2e-2, atol=3e-2)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.float(), out_ref, **tol)
    torch.testing.assert_close(x.grad.float(), x_ref.grad, **(tol if exact else dict(rtol=5e-2, atol=5e-2)))
    # The parameter gradients are float32 sums over all rows in both.
    sum_tol = dict(rtol=1e-4, atol=1e-4) if exact else dict(rtol=3e-2, atol=0.15)
    torch.testing.assert_close(unit.bn.weight.grad, reference.bn.weight.grad, **sum_tol)
    torch.testing.assert_close(unit.bn.bias.grad, reference.bn.bias.grad, **sum_tol)
    torch.testing.assert_close(unit.bn.running_mean, reference.bn.running_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unit.bn.running_var, reference.bn.running_var, rtol=1e-4, atol=1e-5)
    assert unit.bn.num_batches_tracked.item() == reference.bn.num_batches_tracked.item() == 1


def check_model(device: str) -> None:
    """A whole XXS training forward and backward (channels-last), fused against PyTorch's BatchNorm."""
    torch.manual_seed(0)
    model = mvt.create_model("mobilevit_xxs", num_classes=5, drop_rate=0.0, dropout=0.0)
    model = model.to(device, memory_format=torch.channels_last).train()
    reference = copy.deepcopy(model)
    assert set_fused_norm(model) == sum(isinstance(m, ConvNormAct) for m in model.modules()) > 0
    images = torch.randn(2, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.tensor([1, 3], device=device)
    losses = []
    # Full-precision convolutions: with cuDNN's TF32 a 1e-7 difference in a normalised map can round
    # to a 1e-3 one in the next convolution's input.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for net in (model, reference):
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
            losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    for (name, param), ref_param in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(param.grad, ref_param.grad, rtol=1e-3, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    for (name, buffer), ref_buffer in zip(model.named_buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(buffer, ref_buffer, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def run_checks(device: str) -> None:
    for shape, act in SHAPES:
        for dtype in DTYPES:
            check_unit(device, shape, act, dtype)
    check_model(device)


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests below run the compiled kernels")
def test_kernels_in_triton_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_fused_norm"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all fused-norm checks passed" in result.stdout


# Each kernel's argument types for bfloat16 maps (the training default), by parameter name.
_POINTERS = {"x_ptr", "grad_ptr", "out_ptr"}


@needs_triton
@pytest.mark.skipif(INTERPRET, reason="the interpreter does not compile")
def test_kernels_compile_for_an_h100() -> None:
    """Triton's compiler and ptxas (shipped with Triton) build every kernel for sm_90, GPU or not:
    a type or lowering error the interpreter would let through fails here."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from mobilevit_torch.layers import fused_norm

    kernels = [getattr(fused_norm, name) for name in dir(fused_norm) if name.endswith("_kernel")]
    assert len(kernels) == 5
    for kernel in kernels:
        signature, constants = {}, {}
        for name in kernel.arg_names:
            if name in ("BLOCK_M", "BLOCK_C", "BLOCK_P", "ACT"):
                signature[name] = "constexpr"
                constants[name] = {"BLOCK_M": 128, "BLOCK_C": 32, "BLOCK_P": 32, "ACT": True}[name]
            elif name.endswith("_ptr"):
                signature[name] = "*bf16" if name in _POINTERS else "*fp32"
            else:
                signature[name] = "fp32" if name in ("momentum", "eps") else "i32"
        compiled = compile(
            ASTSource(fn=kernel, signature=signature, constexprs=constants), target=GPUTarget("cuda", 90, 32)
        )
        assert compiled.asm["cubin"], kernel.fn.__name__


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("shape", "act"), SHAPES)
def test_unit_on_gpu(shape: tuple[int, int, int, int], act: bool, dtype: torch.dtype) -> None:
    check_unit("cuda", shape, act, dtype)


@needs_cuda
def test_model_on_gpu() -> None:
    check_model("cuda")


def test_only_channels_last_training_on_a_gpu_takes_the_kernels() -> None:
    bn = nn.BatchNorm2d(8).train()
    x = torch.randn(2, 8, 4, 4)
    assert not fused_norm_applies(x, bn)  # NCHW
    x = x.contiguous(memory_format=torch.channels_last)
    assert not fused_norm_applies(x, bn.eval())  # running statistics: PyTorch (or the folded copy)
    assert not fused_norm_applies(x, nn.Identity().train())  # already folded
    if not torch.cuda.is_available():
        assert not fused_norm_applies(x, bn.train())  # CPU tensors: PyTorch's BatchNorm


def test_the_flag_changes_nothing_where_the_kernels_do_not_apply() -> None:
    model = mvt.create_model("mobilevit_xxs", num_classes=3, drop_rate=0.0, dropout=0.0).train()
    reference = copy.deepcopy(model)
    set_fused_norm(model)
    images = torch.randn(2, 3, 64, 64)  # NCHW on the CPU
    torch.testing.assert_close(model(images), reference(images), rtol=0, atol=0)
    assert set_fused_norm(model, enabled=False) == 32 and not any(
        getattr(m, "fused_norm", False) for m in model.modules()
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_train_on_a_cpu_says_why_the_switch_is_off(tmp_path: Path) -> None:
    message = "fused BatchNorm+SiLU kernels: off (they run on CUDA GPUs only)"
    check_switch_is_off(tmp_path, "fused_norm", message, channels_last=True)


if __name__ == "__main__":  # the interpreter run (TRITON_INTERPRET=1 must be set before triton is imported)
    run_checks("cuda" if torch.cuda.is_available() else "cpu")
    print("all fused-norm checks passed")
