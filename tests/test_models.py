"""Every registered model: parameter count, shapes, backward, input sizes, export, features."""

from __future__ import annotations

import pytest
import torch

from mobilevit_torch import VARIANTS, create_model, list_models

PARAMS = {"mobilevit_xxs": 1_272_024, "mobilevit_xs": 2_317_848, "mobilevit_s": 5_578_632}


def test_every_registered_model_has_a_reference_count() -> None:
    assert sorted(PARAMS) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_parameter_count_matches_references(name: str) -> None:
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_no_nan(name: str) -> None:
    model = create_model(name, num_classes=5).train()
    x = torch.randn(2, 3, 128, 128)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 4]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("size", [224, 256, 288, 320, 100, 97])
def test_any_input_size(size: int) -> None:
    # 100 and 97 give odd feature maps (e.g. 13x13 at stride 8) that the block must resize.
    model = create_model("mobilevit_xxs", num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 4)


def test_non_square_input() -> None:
    model = create_model("mobilevit_xxs", num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 224)).shape == (1, 2)


def test_channels_last_matches_contiguous() -> None:
    model = create_model("mobilevit_xxs").eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_multi_scale_features() -> None:
    model = create_model("mobilevit_xs").eval()
    with torch.no_grad():
        features = model.forward_intermediates(torch.randn(1, 3, 256, 256))
    assert [f.shape[-1] for f in features] == [128, 64, 32, 16, 8]  # strides 2, 4, 8, 16, 32
    assert [f.shape[1] for f in features] == [s.out_chs for s in VARIANTS["xs"].stages]
    assert [info["reduction"] for info in model.feature_info] == [2, 4, 8, 16, 32]


def test_reset_classifier() -> None:
    model = create_model("mobilevit_xxs")
    model.reset_classifier(10)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 320)


@pytest.mark.parametrize("name", list_models())
def test_torch_export(name: str) -> None:
    model = create_model(name, num_classes=5).eval()
    x = torch.randn(1, 3, 256, 256)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=1e-5)


def test_torch_export_dynamic_batch() -> None:
    model = create_model("mobilevit_xxs", num_classes=5).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (torch.randn(2, 3, 256, 256),), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        assert exported.module()(torch.randn(3, 3, 256, 256)).shape == (3, 5)
