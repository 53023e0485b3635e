"""The TFLite export's LayerNorm (an L2 normalisation over C + 1 channels) equals ``nn.LayerNorm``."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobilevit_torch import create_model
from mobilevit_torch.export.l2_layernorm import L2LayerNorm, with_l2_layernorms
from tests.conftest import input_sensitive


def _random_norm(channels: int, eps: float, **kwargs: bool) -> nn.LayerNorm:
    norm = nn.LayerNorm(channels, eps=eps, **kwargs)
    with torch.no_grad():
        if norm.weight is not None:
            norm.weight.normal_()
        if norm.bias is not None:
            norm.bias.normal_()
    return norm


def _tokens(channels: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[2, 16, C] tokens with different offsets and spreads, some nearly constant (where eps matters)."""
    offset = torch.randn(2, 16, 1, dtype=dtype) * 5
    spread = torch.logspace(-4, 2, 16, dtype=dtype).reshape(1, 16, 1)  # token n: std about 10^(-4 + 6n/15)
    return offset + spread * torch.randn(2, 16, channels, dtype=dtype)


@pytest.mark.parametrize("channels", [1, 2, 8, 64, 144, 240])
@pytest.mark.parametrize("eps", [1e-5, 1e-2, 1.0])
def test_equals_layernorm(channels: int, eps: float) -> None:
    """The identity is exact: in float64 the two agree to rounding, eps included."""
    norm = _random_norm(channels, eps).double()
    x = _tokens(channels)
    expected = norm(x)
    got = L2LayerNorm(norm)(x)
    assert got.shape == expected.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("channels", [16, 64, 240])
def test_equals_layernorm_float32(channels: int) -> None:
    """In float32, on tokens like the model's (spread not tiny next to the mean), to float32 rounding."""
    norm = _random_norm(channels, 1e-5)
    x = torch.randn(2, 16, 1) * 3 + torch.logspace(-1, 1.5, 16).reshape(1, 16, 1) * torch.randn(2, 16, channels)
    torch.testing.assert_close(L2LayerNorm(norm)(x), norm(x), rtol=1e-5, atol=1e-5)


def test_eps_is_honoured() -> None:
    """On nearly constant tokens the result depends on eps, and follows it as LayerNorm does."""
    x = 3.0 + 1e-3 * torch.randn(4, 32, dtype=torch.float64)  # variance 1e-6
    small, large = _random_norm(32, 1e-8).double(), _random_norm(32, 1e-4).double()
    large.load_state_dict(small.state_dict())
    assert (small(x) - large(x)).abs().max() > 0.5  # eps matters here
    torch.testing.assert_close(L2LayerNorm(small)(x), small(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(L2LayerNorm(large)(x), large(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kwargs", [{"bias": False}, {"elementwise_affine": False}])
def test_without_affine_parameters(kwargs: dict[str, bool]) -> None:
    norm = _random_norm(24, 1e-5, **kwargs).double()
    x = _tokens(24)
    torch.testing.assert_close(L2LayerNorm(norm)(x), norm(x), rtol=1e-5, atol=1e-5)


def test_only_last_dimension() -> None:
    with pytest.raises(ValueError, match="last dimension"):
        L2LayerNorm(nn.LayerNorm([4, 8]))


def test_with_l2_layernorms_copies_the_model() -> None:
    model = input_sensitive(create_model("mobilevit_xxs", num_classes=3)).eval()
    layernorms = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
    swapped = with_l2_layernorms(model)
    assert layernorms == 21  # 9 transformer layers x 2 + one after each of the 3 MobileViT blocks
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == layernorms  # the original is untouched
    assert not any(isinstance(m, nn.LayerNorm) for m in swapped.modules())
    assert sum(isinstance(m, L2LayerNorm) for m in swapped.modules()) == layernorms
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), model(x), rtol=1e-5, atol=1e-5)


def test_onnx_graph(tmp_path: Path) -> None:
    """Exported, the sum of squares is one ReduceSumSquare (what onnx2tf writes as reduce_sum(square)), no LayerNorm."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mobilevit_torch.export.to_tflite import export_tflite_onnx

    model = input_sensitive(create_model("mobilevit_xxs", num_classes=3)).eval()
    path = export_tflite_onnx(model, tmp_path / "m.onnx", img_size=64)
    ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert ops["ReduceSumSquare"] == ops["Sqrt"] == ops["Div"] == 21
    assert "LayerNormalization" not in ops
    x = torch.rand(1, 3, 64, 64)
    got = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() <= 1e-4
