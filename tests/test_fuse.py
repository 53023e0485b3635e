"""Inference fusion, and the MobileViT block's fast path, against the plain formulation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobilevit_torch import create_model, list_models
from mobilevit_torch.blocks import MobileViTBlock, fold_patches, unfold_patches
from mobilevit_torch.layers import ConvNormAct
from mobilevit_torch.models.fuse import fuse_for_inference
from tests.conftest import assert_input_sensitive, input_sensitive, randomize_norms


@pytest.mark.parametrize(
    ("name", "channels_last"), [(name, True) for name in list_models()] + [("mobilevit_xxs", False)]
)
def test_fused_model_matches_eval_model(name: str, channels_last: bool) -> None:
    model = input_sensitive(create_model(name)).eval()
    fused = fuse_for_inference(model, channels_last=channels_last)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not any(isinstance(m, nn.Dropout) for m in fused.modules())
    assert any(isinstance(m, nn.Dropout) for m in model.modules()), "the original keeps its dropout"
    assert all(not p.requires_grad for p in fused.parameters())
    for size in (256, 97):  # 97: odd feature maps take the block's resize path
        x = torch.rand(2, 3, size, size)
        with torch.inference_mode():
            diff = (fused(x) - model(x)).abs().max().item()
            assert_input_sensitive(model(x), model(x.flip(1)))
        assert diff <= 1e-5, f"{size}px: max abs diff {diff}"


def _packed_units(model: nn.Module) -> list[ConvNormAct]:
    return [m for m in model.modules() if isinstance(m, ConvNormAct) and len(m._packed) > 0]


def _set_onednn_kernel(model: nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if isinstance(module, ConvNormAct):
            module.onednn_kernel = enabled


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
def test_folded_units_run_packed_onednn_kernels_on_the_cpu() -> None:
    model = input_sensitive(create_model("mobilevit_xxs")).eval()
    fused = fuse_for_inference(model)
    plain = copy.deepcopy(fused)
    _set_onednn_kernel(plain, False)
    for shape, channels_last in (((1, 3, 256, 256), False), ((3, 3, 96, 128), True), ((2, 3, 97, 97), False)):
        x = torch.rand(*shape)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = fused(x)
            diff = (out - plain(x)).abs().max().item()
            assert diff <= 1e-5, f"{shape}: max abs diff {diff}"
            assert (out - model(x)).abs().max().item() <= 1e-5
    packed = _packed_units(fused)
    assert len(packed) >= 20 and not _packed_units(plain)  # each unit called through forward took the kernel
    assert max(len(m._packed) for m in packed) == 3  # one packed weight per input shape

    # Weights changed in place (a new state_dict loaded): packed again, not stale.
    x = torch.rand(1, 3, 256, 256)  # a shape already packed
    with torch.no_grad():
        fused.stem.conv.weight.mul_(-1)
        plain.stem.conv.weight.mul_(-1)
    with torch.inference_mode():
        assert (fused(x) - plain(x)).abs().max().item() <= 1e-5

    # Copies and pickles start without packed weights (oneDNN's opaque tensors cannot be copied).
    clone = copy.deepcopy(fused)
    assert not _packed_units(clone)
    with torch.inference_mode():
        assert (clone(x) - plain(x)).abs().max().item() <= 1e-5


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
def test_packed_kernels_stay_out_of_autograd_autocast_and_unfolded_units() -> None:
    model = create_model("mobilevit_xxs").eval()
    fused = fuse_for_inference(model)
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    fused(x).sum().backward()  # autograd on: PyTorch's convolution, which has a backward
    assert x.grad is not None and not _packed_units(fused)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused(x)
    assert not _packed_units(fused)
    with torch.inference_mode():
        model(x)  # the unfolded model never takes it
    assert not _packed_units(model)


def test_fusion_leaves_the_original_untouched() -> None:
    model = input_sensitive(create_model("mobilevit_xxs")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fuse_for_inference(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.stem.bn.running_var.shape == (16,) and model.stem.conv.bias is None


def test_fused_conv_norm_act_keeps_the_layout_and_exports() -> None:
    unit = randomize_norms(ConvNormAct(8, 16, kernel_size=3, stride=2)).eval()
    fused = copy.deepcopy(unit)
    fused.fuse_norm()
    assert fused.is_fused and not unit.is_fused and set(fused.state_dict()) == {"conv.weight", "conv.bias"}
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(fused(x), unit(x), atol=1e-5, rtol=1e-5)
    exported = torch.export.export(
        fuse_for_inference(create_model("mobilevit_xxs", num_classes=3)), (torch.randn(1, 3, 64, 64),)
    )
    assert exported.module()(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def reference_block_forward(block: MobileViTBlock, x: Tensor) -> Tensor:
    """Fig. 1b as written (conv_in before unfold, conv_out after fold): what the fast path must equal."""
    y = block.conv_in(block.conv_local(x))
    batch, _, height, width = y.shape
    patches = block.norm(block.transformer(unfold_patches(y, 2, 2)))
    y = block.conv_out(fold_patches(patches, batch, height, width, 2, 2))
    return block.conv_fusion(torch.cat((x, y), dim=1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_block_fast_path_trains_like_the_reference(channels_last: bool) -> None:
    # Training mode: outputs, every gradient and the BatchNorm running statistics must agree, so
    # training curves do not change.
    fast = randomize_norms(MobileViTBlock(6, transformer_dim=8, ffn_dim=16, num_layers=2, num_heads=2, patch_size=2))
    ref = copy.deepcopy(fast)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    fast.to(memory_format=memory_format).train()
    ref.to(memory_format=memory_format).train()
    x = torch.randn(3, 6, 8, 10).contiguous(memory_format=memory_format)
    x_fast, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn(3, 6, 8, 10)
    out_fast, out_ref = fast(x_fast), reference_block_forward(ref, x_ref)
    assert out_fast.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=1e-5)
    F.mse_loss(out_fast, target).backward()
    F.mse_loss(out_ref, target).backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, atol=1e-6, rtol=1e-5)
    for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, atol=1e-6, rtol=1e-5, msg=name)
    for (name, b_fast), b_ref in zip(fast.named_buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b_fast, b_ref, atol=1e-6, rtol=1e-5, msg=name)


def test_inference_copy_binds_submodules_and_parameters_as_plain_attributes() -> None:
    model = input_sensitive(create_model("mobilevit_xxs", num_classes=10)).eval()
    fused = fuse_for_inference(model)
    for module in fused.modules():
        for registry in (module._modules, module._parameters):
            for name, value in registry.items():
                assert module.__dict__.get(name) is value, f"{type(module).__name__}.{name}"
    assert not any(name in model.__dict__ for name in model._modules), "the original model is not touched"

    x = torch.rand(2, 3, 64, 64)
    other = fuse_for_inference(input_sensitive(create_model("mobilevit_xxs", num_classes=10)).eval())
    with torch.inference_mode():
        before = fused(x)
        fused.load_state_dict(other.state_dict())  # in place: the bound parameters are the same objects
        assert torch.allclose(fused(x), other(x), atol=1e-5) and not torch.allclose(fused(x), before)
        fused.classifier = nn.Identity()  # a new assignment replaces the bound attribute too
        assert fused(x).shape == (2, fused.num_features)
        expected = fused(x)
        # Copied under inference_mode its weights are inference tensors (no version counter): such
        # units take PyTorch's own convolution, the same result to float32 rounding.
        twin = copy.deepcopy(fused)
        assert twin.__dict__["stem"] is twin._modules["stem"] and twin.stem is not fused.stem
        assert torch.allclose(twin(x), expected, atol=1e-5)
    twin = copy.deepcopy(fused)
    with torch.inference_mode():
        assert torch.equal(twin(x), expected)
