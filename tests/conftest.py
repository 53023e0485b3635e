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
