"""The opt-in low-precision LayerNorm: nn.LayerNorm unless switched on under autocast, then autocast's dtype."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobilevit_torch as mvt
from mobilevit_torch.layers import LayerNorm
from mobilevit_torch.layers.layer_norm import set_low_precision_layernorm
from tests.train_helpers import check_switch_is_off


def _pair(dim: int = 24) -> tuple[LayerNorm, nn.LayerNorm]:
    torch.manual_seed(0)
    reference = nn.LayerNorm(dim)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    norm = LayerNorm(dim)
    norm.load_state_dict(reference.state_dict())
    return norm, reference


def test_switched_off_or_without_autocast_it_is_nn_layernorm() -> None:
    norm, reference = _pair()
    x = torch.randn(4, 10, 24) * 3 + 1
    torch.testing.assert_close(norm(x), reference(x), rtol=0, atol=0)
    set_low_precision_layernorm(norm)
    torch.testing.assert_close(norm(x), reference(x), rtol=0, atol=0)  # no autocast: float32 as before
    assert set(norm.state_dict()) == set(reference.state_dict())


def test_under_autocast_it_normalises_in_autocast_dtype() -> None:
    norm, reference = _pair()
    set_low_precision_layernorm(norm)
    x = (torch.randn(4, 10, 24) * 3 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
        with torch.autocast("cpu", enabled=False):
            out_ref = reference(x_ref)
    assert out.dtype == torch.bfloat16  # a float32 input is normalised in bfloat16, not float32
    torch.testing.assert_close(out.float(), out_ref, rtol=2e-2, atol=3e-2)
    grad = torch.randn_like(out_ref)
    out.backward(grad.bfloat16())
    out_ref.backward(grad)
    assert norm.weight.grad is not None and norm.weight.grad.dtype == torch.float32  # parameters stay float32
    torch.testing.assert_close(norm.weight.grad, reference.weight.grad, rtol=3e-2, atol=0.2)
    torch.testing.assert_close(norm.bias.grad, reference.bias.grad, rtol=3e-2, atol=0.2)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=5e-2, atol=5e-2)
    set_low_precision_layernorm(norm, enabled=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x.detach()).dtype == torch.float32  # off again: what nn.LayerNorm gives here


def test_every_transformer_layernorm_is_switched() -> None:
    model = mvt.create_model("mobilevit_xxs", num_classes=5)
    # XXS: 2 + 4 + 3 transformer layers with two LayerNorms each, and one after each of the 3 blocks.
    assert set_low_precision_layernorm(model) == 2 * (2 + 4 + 3) + 3
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 21
    assert all(m.low_precision for m in model.modules() if isinstance(m, LayerNorm))


def test_train_says_why_the_switch_is_off_without_amp(tmp_path: Path) -> None:
    check_switch_is_off(tmp_path, "layernorm_low_precision", "LayerNorm in autocast's dtype: off (amp is off)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_step_on_gpu_matches_float32_layernorm() -> None:
    torch.manual_seed(0)
    model = mvt.create_model("mobilevit_xxs", num_classes=5, drop_rate=0.0, dropout=0.0).cuda().train()
    reference = mvt.create_model("mobilevit_xxs", num_classes=5, drop_rate=0.0, dropout=0.0).cuda().train()
    reference.load_state_dict(model.state_dict())
    set_low_precision_layernorm(model)
    images, labels = torch.randn(4, 3, 64, 64, device="cuda"), torch.tensor([0, 1, 2, 3], device="cuda")
    losses = []
    for net in (model, reference):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(images).float(), labels)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=2e-2)
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        cosine = F.cosine_similarity(a.grad.flatten().float(), b.grad.flatten().float(), dim=0)
        assert cosine > 0.98
