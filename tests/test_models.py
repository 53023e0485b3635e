"""Every registered model: parameter count, shapes, backward, input sizes, export, features."""

from __future__ import annotations

import numpy as np
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


def test_channels_last_gradients_have_their_parameters_strides() -> None:
    """DDP lays its gradient buckets out like the parameters and copies (with a warning) any gradient
    with other strides: after .to(channels_last), every gradient must come back in its parameter's."""
    model = create_model("mobilevit_xxs", num_classes=5).to(memory_format=torch.channels_last)
    model(torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)).sum().backward()
    differ = [name for name, p in model.named_parameters() if p.grad is not None and p.grad.stride() != p.stride()]
    assert differ == []


@pytest.mark.parametrize("name", list_models())
def test_multi_scale_features(name: str) -> None:
    model = create_model(name).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        features = model.forward_intermediates(x)
        picked = model.forward_intermediates(x, indices=(3, 1))
    assert [f.shape[-1] for f in features] == [128, 64, 32, 16, 8]  # strides 2, 4, 8, 16, 32
    assert [f.shape[1] for f in features] == [s.out_chs for s in VARIANTS[name.removeprefix("mobilevit_")].stages]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.channels() == [f.shape[1] for f in features]
    assert len(picked) == 2 and picked[0].equal(features[1]) and picked[1].equal(features[3])


@pytest.mark.parametrize("name", list_models())
def test_features_only_is_a_backbone_that_stops_at_its_last_level(name: str) -> None:
    model = create_model(name).eval()
    backbone = model.as_backbone(out_indices=(1, -2))
    assert backbone.out_indices == (1, 3) and len(backbone.stages) == 4  # stage 4 is never run
    assert backbone.feature_info.channels() == [model.feature_info[1]["num_chs"], model.feature_info[3]["num_chs"]]
    assert backbone.feature_info.reduction() == [4, 16]
    assert backbone.stem is model.stem  # shares the model's weights
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        expected = model.forward_intermediates(x)
        out = backbone(x)
    assert [f.shape for f in out] == [
        (2, backbone.feature_info[i]["num_chs"], 160 // r, 224 // r) for i, r in enumerate((4, 16))
    ]
    assert out[0].equal(expected[1]) and out[1].equal(expected[3])
    # Its parameter names are the full model's, so a full checkpoint loads into it.
    missing, unexpected = backbone.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith(("stages.4.", "final_conv.", "classifier.")) for k in unexpected)

    numpy_and_generator = create_model(name, features_only=True, out_indices=(i for i in np.array([3, 1])))
    assert numpy_and_generator.out_indices == (1, 3)
    built = create_model(name, features_only=True)
    assert not hasattr(built, "classifier") and built.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert len(built(torch.randn(1, 3, 64, 64))) == 5


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(out_indices=(1, 2)), ValueError, "pass features_only=True"),
        (dict(features_only=True, num_classes=5), ValueError, "builds no classifier"),
        (dict(features_only=True, out_indices=(1, 5)), ValueError, r"must be in 0..4 \(or -5..-1\), got \(1, 5\)"),
        (dict(features_only=True, out_indices=()), ValueError, "must be in 0..4"),
        (dict(features_only=True, out_indices=3), TypeError, "a sequence of integers"),
        (dict(features_only=True, out_indices=(1.0, 2)), TypeError, "a sequence of integers"),
        (dict(features_only=True, out_indices="12"), TypeError, "a sequence of integers"),
    ],
)
def test_bad_feature_requests_are_named(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        create_model("mobilevit_xxs", **kwargs)


def test_fused_backbone_matches_the_backbone() -> None:
    from mobilevit_torch.models import fuse_for_inference

    backbone = create_model("mobilevit_xxs", features_only=True, out_indices=(2, 4)).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        for out, ref in zip(fuse_for_inference(backbone)(x), backbone(x), strict=True):
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("features_only", [False, True])
def test_grad_checkpointing_recomputes_each_stage_with_the_same_gradients(features_only: bool) -> None:
    """Same loss and gradients with and without, the random draws (dropout, stochastic depth) included;
    with it each stage runs twice per training step (forward, then again in the backward), once without
    autograd."""
    kwargs = dict(drop_path_rate=0.2, dropout=0.1, attn_drop=0.1)
    heads = dict(features_only=True) if features_only else dict(num_classes=3)
    model = create_model("mobilevit_xxs", **heads, **kwargs).train()
    calls = []
    model.stages[2].register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 64, 64)

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(0)
        out = model(x)
        loss = sum(o.square().mean() for o in out) if features_only else out.square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss, grads = loss_and_grads()
    assert len(calls) == 1
    model.load_state_dict(state)  # the same BatchNorm running statistics for the second pass
    model.set_grad_checkpointing()
    calls.clear()
    loss_ckpt, grads_ckpt = loss_and_grads()
    assert len(calls) == 2, "the stage was not recomputed in the backward"
    torch.testing.assert_close(loss_ckpt, loss)
    assert len(grads_ckpt) == len(grads)
    for g_ckpt, g in zip(grads_ckpt, grads, strict=True):
        torch.testing.assert_close(g_ckpt, g, atol=1e-6, rtol=1e-5)
    calls.clear()
    with torch.no_grad():
        model(x)
    assert len(calls) == 1


def test_reset_classifier() -> None:
    model = create_model("mobilevit_xxs")
    model.reset_classifier(10)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 320)


def test_reset_classifier_takes_timms_global_pool_argument() -> None:
    model = create_model("mobilevit_xxs")
    model.reset_classifier(3, "avg")
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    for pool in ("max", "", "catavgmax"):
        with pytest.raises(ValueError, match=rf"global_pool={pool!r} is not available: MobileViT pools by global"):
            model.reset_classifier(4, pool)
    assert model.get_classifier().out_features == 3  # a refused call changes nothing


def test_get_classifier_and_forward_head_as_timm_names_them() -> None:
    """``forward == forward_head(forward_features)``; ``pre_logits=True`` stops at the pooled features,
    which ``get_classifier()`` (the final Linear) turns into the logits."""
    model = create_model("mobilevit_xxs", num_classes=6).eval()
    classifier = model.get_classifier()
    assert isinstance(classifier, torch.nn.Linear) and classifier.out_features == 6
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        features = model.forward_features(x)  # [2, 320, 3, 3]
        pooled = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(features), model(x))
        torch.testing.assert_close(classifier(pooled), model(x))
    model.reset_classifier(3)
    assert model.get_classifier() is model.classifier and model.get_classifier().out_features == 3
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)


def test_reset_classifier_keeps_model_args_true_and_checks_its_argument() -> None:
    """A checkpoint rebuilds the model from ``model_args``: it must name the classifier the model has."""
    model = create_model("mobilevit_xxs", num_classes=3, drop_rate=0.2)
    model.reset_classifier(7)
    assert model.model_args == {"num_classes": 7, "drop_rate": 0.2}
    with pytest.raises(ValueError, match="num_classes must be >= 0, got -1"):
        model.reset_classifier(-1)
    with pytest.raises(TypeError, match="num_classes must be an integer, got str '3'"):
        model.reset_classifier("3")  # type: ignore[arg-type]
    assert model.num_classes == 7 and model.classifier.out_features == 7


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_classes": "5"}, TypeError, "num_classes must be an integer, got str '5'"),
        ({"num_classes": 5.0}, TypeError, "num_classes must be an integer, got float 5.0"),
        ({"num_classes": True}, TypeError, "num_classes must be an integer, got True"),
        ({"num_classes": -1}, ValueError, "num_classes must be >= 0, got -1"),
        ({"in_chans": 0}, ValueError, "in_chans must be >= 1, got 0"),
        ({"drop_rate": -0.1}, ValueError, r"drop_rate is a dropout probability and must be in \[0, 1\], got -0.1"),
        ({"drop_rate": "0.1"}, TypeError, "drop_rate must be a number in"),
        ({"dropout": 1.5}, ValueError, "dropout is a dropout probability"),
        ({"attn_drop": 2.0}, ValueError, "attn_drop is a dropout probability"),  # torch: only at the first step
        ({"ffn_drop": -1}, ValueError, "ffn_drop is a dropout probability"),
        (
            {"drop_path_rate": 1.0},
            ValueError,
            r"drop_path_rate is a drop-path \(stochastic depth\) probability and must be in \[0, 1\), got 1.0",
        ),
        ({"drop_path_rate": -0.1}, ValueError, r"drop_path_rate is a drop-path .* in \[0, 1\), got -0.1"),
        ({"drop_path_rate": "0.1"}, TypeError, r"drop_path_rate must be a number in \[0, 1\), got str '0.1'"),
    ],
)
def test_bad_arguments_are_named_up_front(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        create_model("mobilevit_xxs", **kwargs)


def test_integer_like_num_classes_and_boundary_rates_are_accepted() -> None:
    import numpy as np

    model = create_model("mobilevit_xxs", num_classes=np.int64(4), in_chans=1, drop_rate=0, attn_drop=1.0)
    assert model.num_classes == 4 and type(model.num_classes) is int
    assert type(model.model_args["num_classes"]) is int  # checkpoints are read back with weights_only=True
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 4)


def drop_path_rates(model: torch.nn.Module) -> dict[str, float]:
    from mobilevit_torch.layers import DropPath

    return {name: module.rate for name, module in model.named_modules() if isinstance(module, DropPath)}


def test_drop_path_rate_is_off_by_default_and_changes_only_training() -> None:
    assert drop_path_rates(create_model("mobilevit_xxs")) == {}
    kwargs = dict(num_classes=4, drop_rate=0.0, dropout=0.0)
    plain = create_model("mobilevit_xxs", **kwargs)
    dropping = create_model("mobilevit_xxs", drop_path_rate=0.3, **kwargs)
    dropping.load_state_dict(plain.state_dict())  # no new parameters or buffers
    assert dropping.model_args["drop_path_rate"] == 0.3
    x = torch.rand(8, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dropping.eval()(x), plain.eval()(x), atol=0, rtol=0)
        assert not torch.allclose(dropping.train()(x), plain.train()(x))
    loss = dropping(x).logsumexp(dim=1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dropping.parameters())


@pytest.mark.parametrize("name", list_models())
def test_drop_path_rate_follows_timms_schedule(name: str) -> None:
    """Same rates on the same residual branches as ``timm.create_model(name, drop_path_rate=...)``; timm
    also drops the down-sampling MV2 blocks' whole output (no shortcut), which is left out here."""
    timm = pytest.importorskip("timm")
    from timm.layers import DropPath as TimmDropPath

    reference = timm.create_model(name, drop_path_rate=0.1)
    expected = {n: m.drop_prob for n, m in reference.named_modules() if isinstance(m, TimmDropPath)}
    down_sampling = {f"stages.{i}.0.drop_path" for i, spec in enumerate(VARIANTS[name[10:]].stages) if spec.stride > 1}
    ours = drop_path_rates(create_model(name, drop_path_rate=0.1))
    assert ours == {n: rate for n, rate in expected.items() if n not in down_sampling}
    assert max(ours.values()) == pytest.approx(0.1)


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


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated, but still what many deploy with
# The trace is fixed to the traced input size, which its TracerWarning says (README: graph capture).
@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean:torch.jit.TracerWarning")
@pytest.mark.parametrize("fused", [False, True])
def test_torch_jit_trace_passes_its_own_check(fused: bool) -> None:
    """``torch.jit.trace`` traces with autograd on, then traces again under ``no_grad`` to check the
    graph; both must take the same (not the in-place) activation path."""
    from mobilevit_torch.models import fuse_for_inference

    model = create_model("mobilevit_xxs", num_classes=5).eval()
    if fused:
        model = fuse_for_inference(model)
    x = torch.randn(2, 3, 64, 64)
    traced = torch.jit.trace(model, x)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), atol=1e-5, rtol=1e-5)
