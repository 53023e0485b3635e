from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
FLOWERS = Path(os.environ.get("MOBILEVIT_FLOWERS", REPO.parent / "shared" / "data" / "flower_photos"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def flowers_root() -> Path:
    if not (FLOWERS.is_dir() and any(FLOWERS.iterdir())):
        pytest.skip(f"real flower photos not found at {FLOWERS} (set MOBILEVIT_FLOWERS)")
    return FLOWERS


def randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random BatchNorm statistics/affines and LayerNorm affines, so no norm is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) * 0.5 + 0.75)
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
    return model


def input_sensitive(model: nn.Module, size: int = 64, seed: int = 1) -> nn.Module:
    """A whole image model (``[N, 3, H, W]`` in) in eval mode whose outputs depend on its input: random norm affines
    (:func:`randomize_norms`) and BatchNorm statistics measured on random images at ``size`` px.

    With made-up statistics a randomly initialised MobileViT's activations fade layer by layer: its logits differ
    by ~1e-5 to 1e-7 between any two inputs, below every parity tolerance, so a check on it would pass for a model
    that reads the image as BGR or not at all. With measured statistics they differ by ~0.1."""
    randomize_norms(model, seed)
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 3, size, size, generator=generator))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return model.eval()


def assert_input_sensitive(outputs: torch.Tensor, other: torch.Tensor, at_least: float = 1e-2) -> None:
    """``outputs`` and ``other``, a model's outputs on two different inputs, differ by ``at_least``: a parity check on
    its outputs can tell a wrong input layout or colour order from the right one."""
    spread = (outputs - other).abs().max().item()
    assert spread >= at_least, f"the model's outputs barely depend on its input (max change {spread:.2e})"

