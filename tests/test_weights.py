"""Loading every published checkpoint layout, with exact parity against the reference implementations."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mobilevit_torch import WeightsError, create_model, list_models
from mobilevit_torch.weights import detect_layout, read_pretrained
from tests.conftest import assert_input_sensitive, input_sensitive

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

SIZES = (256, 224, 320)
HF_CONFIGS = {  # the sizes transformers' conversion script gives each variant
    "mobilevit_xxs": dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0),
    "mobilevit_xs": dict(hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384]),
    "mobilevit_s": dict(hidden_sizes=[144, 192, 240], neck_hidden_sizes=[16, 32, 64, 96, 128, 160, 640]),
}


def hf_model(name: str, num_labels: int = 1000) -> torch.nn.Module:
    config = transformers.MobileViTConfig(num_labels=num_labels, **HF_CONFIGS[name])
    return input_sensitive(transformers.MobileViTForImageClassification(config)).eval()


def assert_same_logits(reference, ours, sizes=SIZES) -> None:
    for size in sizes:
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            expected = reference(x)
            expected = getattr(expected, "logits", expected)
            diff = (ours(x) - expected).abs().max().item()
            other = reference(x.flip(1))  # the same pixels in BGR order
            assert_input_sensitive(expected, getattr(other, "logits", other))
        assert diff <= 1e-5, f"{size}px: max abs diff {diff}"


@pytest.mark.parametrize("name", list_models())
def test_timm_parity(name: str, tmp_path: Path) -> None:
    reference = input_sensitive(timm.create_model(name)).eval()
    save_file(reference.state_dict(), tmp_path / "model.safetensors")
    ours = create_model(name, pretrained=tmp_path / "model.safetensors").eval()
    assert_same_logits(reference, ours)
    assert ours.preprocessing.channel_order == "BGR"


@pytest.mark.parametrize("name", list_models())
def test_transformers_parity_save_pretrained_dir(name: str, tmp_path: Path) -> None:
    reference = hf_model(name)
    reference.save_pretrained(tmp_path / "hf")
    ours = create_model(name, pretrained=tmp_path / "hf").eval()
    assert_same_logits(reference, ours)
    assert ours.preprocessing.channel_order == "BGR"
    assert ours.preprocessing.interpolation == "bilinear"
    assert ours.preprocessing.resize_size == 288 and ours.preprocessing.crop_pct == 256 / 288  # Apple's evaluation


def test_transformers_preprocessor_config_sets_the_preprocessing(tmp_path: Path) -> None:
    """A save_pretrained folder's preprocessor_config.json: resample 3 (PIL's BICUBIC) is bicubic, and the crop and
    shortest edge give input_size and crop_pct (224 of 256: 0.875), not Apple's 256 of 288."""
    from transformers.image_utils import PILImageResampling

    hf_model("mobilevit_xxs", num_labels=4).save_pretrained(tmp_path / "hf")
    processor = transformers.MobileViTImageProcessor(
        resample=PILImageResampling.BICUBIC, size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}
    )
    processor.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["resample"] == 3
    pre = read_pretrained("mobilevit_xxs", tmp_path / "hf").preprocessing
    assert pre.interpolation == "bicubic" and pre.channel_order == "BGR"
    assert pre.input_size == 224 and pre.crop_pct == 0.875 and pre.resize_size == 256


def test_headless_transformers_weights_are_recognised() -> None:
    """transformers' MobileViTModel (the backbone without the classifier: no 'mobilevit.' prefix)."""
    config = transformers.MobileViTConfig(**HF_CONFIGS["mobilevit_xxs"])
    assert detect_layout(transformers.MobileViTModel(config).state_dict()) == "transformers"


def test_transformers_parity_bin_file(tmp_path: Path) -> None:
    reference = hf_model("mobilevit_xxs")
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    ours = create_model("mobilevit_xxs", pretrained=tmp_path / "pytorch_model.bin").eval()
    assert_same_logits(reference, ours, sizes=(256,))


def hf_to_cvnets(state_dict: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Apple's ml-cvnets names for a transformers state dict: the inverse of transformers' official
    ``convert_mlcvnets_to_pytorch.rename_key`` (checked against it below)."""
    import re

    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        k = key.removeprefix("mobilevit.")
        if k.startswith("classifier."):
            out["classifier.fc." + k.removeprefix("classifier.")] = value
            continue
        k = re.sub(r"^conv_stem\.", "conv_1.", k)
        k = re.sub(r"^encoder\.layer\.(\d)\.layer\.(\d)\.", lambda m: f"layer_{int(m[1]) + 1}.{m[2]}.", k)
        k = re.sub(r"^encoder\.layer\.(\d)\.downsampling_layer\.", lambda m: f"layer_{int(m[1]) + 1}.0.", k)
        k = re.sub(r"^encoder\.layer\.(\d)\.", lambda m: f"layer_{int(m[1]) + 1}.1.", k)
        k = k.replace("expand_1x1.", "block.exp_1x1.").replace("conv_3x3.", "block.conv_3x3.")
        k = k.replace("reduce_1x1.", "block.red_1x1.")
        k = k.replace(".conv_kxk.", ".local_rep.conv_3x3.").replace(".conv_1x1.", ".local_rep.conv_1x1.")
        k = k.replace(".conv_projection.", ".conv_proj.")
        k = k.replace(".convolution.", ".block.conv.").replace(".normalization.", ".block.norm.")
        if k.endswith(("layernorm.weight", "layernorm.bias")):
            stage = int(k.split(".")[0][len("layer_") :]) - 1
            depth = len(model.mobilevit.encoder.layer[stage].transformer.layer)
            k = k.replace(".layernorm.", f".global_rep.{depth}.")
        k = re.sub(r"\.transformer\.layer\.(\d+)\.", r".global_rep.\1.", k)
        k = k.replace(".layernorm_before.", ".pre_norm_mha.0.").replace(".layernorm_after.", ".pre_norm_ffn.0.")
        k = k.replace(".attention.output.dense.", ".pre_norm_mha.1.out_proj.")
        k = k.replace(".intermediate.dense.", ".pre_norm_ffn.1.").replace(".output.dense.", ".pre_norm_ffn.4.")
        match = re.fullmatch(r"(.*)\.attention\.attention\.(query|key|value)\.(weight|bias)", k)
        if match:
            if match[2] == "query":
                prefix = key.rsplit(".query.", 1)[0]
                parts = [state_dict[f"{prefix}.{n}.{match[3]}"] for n in ("query", "key", "value")]
                out[f"{match[1]}.pre_norm_mha.1.qkv_proj.{match[3]}"] = torch.cat(parts)
            continue
        out[k] = value
    return out


@pytest.mark.parametrize("name", list_models())
def test_cvnets_layout_parity(name: str, tmp_path: Path) -> None:
    reference = hf_model(name)
    apple = hf_to_cvnets(reference.state_dict(), reference)
    assert detect_layout(apple) == "ml-cvnets"
    # Names as ml-cvnets' MobileViT defines them (conv_1, layer_1..5, local_rep/global_rep, ...).
    last = 3  # stage 5 has three transformer layers in every variant
    for key in (
        "conv_1.block.conv.weight",
        "conv_1.block.norm.running_var",
        "layer_1.0.block.exp_1x1.block.conv.weight",
        "layer_2.2.block.red_1x1.block.norm.bias",
        "layer_3.0.block.conv_3x3.block.conv.weight",
        "layer_3.1.local_rep.conv_3x3.block.norm.weight",
        "layer_3.1.local_rep.conv_1x1.block.conv.weight",
        "layer_3.1.global_rep.0.pre_norm_mha.0.weight",
        "layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight",
        "layer_3.1.global_rep.1.pre_norm_mha.1.out_proj.bias",
        "layer_3.1.global_rep.1.pre_norm_ffn.0.bias",
        "layer_4.1.global_rep.3.pre_norm_ffn.1.weight",
        "layer_4.1.global_rep.3.pre_norm_ffn.4.weight",
        "layer_3.1.global_rep.2.weight",  # the LayerNorm after 2 transformer layers
        "layer_4.1.global_rep.4.bias",
        f"layer_5.1.global_rep.{last}.weight",
        "layer_5.1.conv_proj.block.conv.weight",
        "layer_5.1.fusion.block.norm.running_mean",
        "conv_1x1_exp.block.conv.weight",
        "classifier.fc.weight",
    ):
        assert key in apple, key
    n_transformer_layers = sum(len(layer.transformer.layer) for layer in reference.mobilevit.encoder.layer[2:])
    assert len(apple) == len(reference.state_dict()) - 4 * n_transformer_layers  # q, k, v fused into qkv

    torch.save(apple, tmp_path / "mobilevit_apple.pt")
    ours = create_model(name, pretrained=tmp_path / "mobilevit_apple.pt").eval()
    assert_same_logits(reference, ours, sizes=(256,))


def test_new_num_classes_reinitialises_classifier(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference = input_sensitive(timm.create_model("mobilevit_xxs")).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch"):
        ours = create_model("mobilevit_xxs", pretrained=tmp_path / "timm.pth", num_classes=5).eval()
    assert "classifier re-initialised" in caplog.text and "1000 classes" in caplog.text
    assert ours.classifier.out_features == 5
    with torch.no_grad():  # the backbone is loaded exactly
        x = torch.rand(1, 3, 256, 256)
        torch.testing.assert_close(ours.forward_features(x), reference.forward_features(x), atol=1e-5, rtol=0)


def test_num_classes_0_leaves_the_classifier_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference = input_sensitive(timm.create_model("mobilevit_xxs")).eval()
    save_file(reference.state_dict(), tmp_path / "timm.safetensors")
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch"):
        ours = create_model("mobilevit_xxs", pretrained=tmp_path / "timm.safetensors", num_classes=0).eval()
    assert "classifier left out (num_classes=0, features only)" in caplog.text and "re-initialised" not in caplog.text
    with torch.no_grad():
        x = torch.rand(1, 3, 256, 256)
        torch.testing.assert_close(ours(x), reference.forward_head(reference.forward_features(x), pre_logits=True))


def test_pretrained_with_drop_path_rate_keeps_eval_parity(tmp_path: Path) -> None:
    """Stochastic depth adds no weights and does nothing in eval mode: fine-tune from timm's weights with it."""
    reference = input_sensitive(timm.create_model("mobilevit_xs")).eval()
    save_file(reference.state_dict(), tmp_path / "model.safetensors")
    ours = create_model("mobilevit_xs", pretrained=tmp_path / "model.safetensors", drop_path_rate=0.1).eval()
    assert_same_logits(reference, ours, sizes=(256,))


def test_forward_head_pre_logits_and_get_classifier_match_timm(tmp_path: Path) -> None:
    reference = input_sensitive(timm.create_model("mobilevit_xxs")).eval()
    save_file(reference.state_dict(), tmp_path / "timm.safetensors")
    ours = create_model("mobilevit_xxs", pretrained=tmp_path / "timm.safetensors").eval()
    torch.testing.assert_close(ours.get_classifier().state_dict(), reference.get_classifier().state_dict())
    with torch.no_grad():
        x = torch.rand(2, 3, 256, 256)
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True), expected)


def test_features_only_matches_timm_and_transformers_feature_maps(tmp_path: Path) -> None:
    """The backbone's levels are transformers' hidden states (all five) and timm's ``features_only`` maps
    (levels 0-3; timm's stride-32 map is after the 1x1 expansion), on the same weights."""
    x = torch.rand(2, 3, 256, 256)
    hf = hf_model("mobilevit_xxs")
    hf.save_pretrained(tmp_path / "hf")
    ours = create_model("mobilevit_xxs", pretrained=tmp_path / "hf", features_only=True).eval()
    with torch.no_grad():
        expected = hf(x, output_hidden_states=True).hidden_states
        out = ours(x)
    assert len(out) == len(expected) == 5
    for level, (mine, theirs) in enumerate(zip(out, expected, strict=True)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5, msg=f"level {level}")

    reference = input_sensitive(timm.create_model("mobilevit_xxs")).eval()
    save_file(reference.state_dict(), tmp_path / "timm.safetensors")
    ours = create_model(
        "mobilevit_xxs", pretrained=tmp_path / "timm.safetensors", features_only=True, out_indices=(0, 1, 2, 3)
    )
    timm_features = timm.create_model("mobilevit_xxs", features_only=True, out_indices=(0, 1, 2, 3))
    assert ours.feature_info.channels() == timm_features.feature_info.channels()
    assert ours.feature_info.reduction() == timm_features.feature_info.reduction()
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)
        for mine, theirs in zip(ours.eval()(x), expected, strict=True):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_a_backbone_loads_its_own_weights_and_its_part_of_a_whole_models(tmp_path: Path) -> None:
    whole = input_sensitive(create_model("mobilevit_xxs", num_classes=4))
    torch.save(whole.state_dict(), tmp_path / "whole.pt")
    short = create_model("mobilevit_xxs", features_only=True, out_indices=(1,), pretrained=tmp_path / "whole.pt")
    assert short.feature_info.channels() == [24]
    torch.testing.assert_close(
        short.state_dict(), {k: v for k, v in whole.state_dict().items() if k in short.state_dict()}
    )

    torch.save(short.state_dict(), tmp_path / "short.pt")  # a backbone's own weights, two stages only
    again = create_model("mobilevit_xxs", features_only=True, out_indices=[-4], pretrained=tmp_path / "short.pt")
    torch.testing.assert_close(again.state_dict(), short.state_dict())
    with pytest.raises(WeightsError, match=r"(?s)does not match mobilevit_xxs.*missing: stages\.2\."):
        create_model("mobilevit_xxs", features_only=True, pretrained=tmp_path / "short.pt")
    with pytest.raises(WeightsError, match="does not match mobilevit_xxs"):
        create_model("mobilevit_xxs", pretrained=tmp_path / "short.pt")  # the whole model needs the head too


def test_grayscale_model_from_rgb_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """in_chans=1 sums the first convolution over R, G, B: a gray image gives what the RGB model gives
    for the same gray replicated to three channels."""
    reference = input_sensitive(timm.create_model("mobilevit_xxs")).eval()
    save_file(reference.state_dict(), tmp_path / "timm.safetensors")
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch"):
        gray = create_model("mobilevit_xxs", pretrained=tmp_path / "timm.safetensors", in_chans=1).eval()
    assert caplog.text.count("input convolution adapted from 3 to 1 channel(s), summed over R, G, B") == 1
    assert gray.stem.conv.weight.shape[1] == 1
    x = torch.rand(2, 1, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), reference(x.expand(-1, 3, -1, -1)), atol=1e-5, rtol=0)

    # Weights saved from the gray model load back as they are; into an RGB model they do not fit.
    torch.save(gray.state_dict(), tmp_path / "gray.pt")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch"):
        again = create_model("mobilevit_xxs", pretrained=tmp_path / "gray.pt", in_chans=1)
    assert "adapted" not in caplog.text and torch.equal(again.stem.conv.weight, gray.stem.conv.weight)
    with pytest.raises(WeightsError, match=r"with another shape: stem.conv.weight \(checkpoint \(16, 1, 3, 3\)"):
        create_model("mobilevit_xxs", pretrained=tmp_path / "gray.pt")


@pytest.mark.parametrize("in_chans", [2, 4, 6])
def test_more_input_channels_from_rgb_weights_follow_timm(
    in_chans: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from timm.models._manipulate import adapt_input_conv as timm_adapt_input_conv

    reference = input_sensitive(timm.create_model("mobilevit_xxs")).eval()
    save_file(reference.state_dict(), tmp_path / "timm.safetensors")
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch"):
        ours = create_model("mobilevit_xxs", pretrained=tmp_path / "timm.safetensors", in_chans=in_chans).eval()
    assert f"adapted from 3 to {in_chans} channel(s), R, G, B repeated and scaled by 3/{in_chans}" in caplog.text
    expected = timm_adapt_input_conv(in_chans, reference.stem.conv.weight.detach().clone())
    torch.testing.assert_close(ours.stem.conv.weight, expected, atol=0, rtol=0)
    if in_chans == 6:  # R, G, B twice at half weight: the same RGB image twice gives the RGB model's logits
        x = torch.rand(1, 3, 256, 256)
        with torch.no_grad():
            torch.testing.assert_close(ours(x.repeat(1, 2, 1, 1)), reference(x), atol=1e-5, rtol=0)


def test_wrong_variant_is_a_clear_error(tmp_path: Path) -> None:
    save_file(timm.create_model("mobilevit_xs").state_dict(), tmp_path / "xs.safetensors")
    with pytest.raises(WeightsError, match="does not match mobilevit_xxs.*looks like a mobilevit_xs") as err:
        create_model("mobilevit_xxs", pretrained=tmp_path / "xs.safetensors")
    assert "with another shape" in str(err.value)


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = timm.create_model("mobilevit_xxs").state_dict()
    del state["stages.2.1.norm.weight"]
    state["stages.2.1.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError) as err:
        create_model("mobilevit_xxs", pretrained=tmp_path / "broken.pth")
    assert "1 missing: stages.2.1.norm.weight" in str(err.value)
    assert "1 unexpected: stages.2.1.extra.weight" in str(err.value)


def test_refuses_pickled_objects(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(1), "evil": Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="cannot read weights"):
        create_model("mobilevit_xxs", pretrained=tmp_path / "evil.pt")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(WeightsError, match="cannot read weights from .*notes.pt: not a PyTorch or safetensors file"):
        create_model("mobilevit_xxs", pretrained=tmp_path / "notes.pt")
    (tmp_path / "notes.safetensors").write_text("hello, this is text")
    with pytest.raises(WeightsError, match="notes.safetensors: not a PyTorch or safetensors file"):
        create_model("mobilevit_xxs", pretrained=tmp_path / "notes.safetensors")
    # Other binary files: torch.load's pickle reader says "Weights only load failed" for some of them,
    # which is no reason to call them pickled models.
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    Image.new("RGBA", (8, 8)).save(tmp_path / "icon.png")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.0.0")
    for name in ("photo.jpg", "icon.png", "model.onnx"):
        with pytest.raises(WeightsError, match=f"{name}: not a PyTorch or safetensors file"):
            create_model("mobilevit_xxs", pretrained=tmp_path / name)
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    # A WeightsError (one line from the command-line tools) that is still a ValueError, naming the file.
    with pytest.raises(WeightsError, match="other.safetensors: these weights are not a MobileViT checkpoint") as err:
        create_model("mobilevit_xxs", pretrained=tmp_path / "other.safetensors")
    assert isinstance(err.value, ValueError)


def test_damaged_files_are_called_damaged(tmp_path: Path) -> None:
    """Cut short, a weights file is a damaged one of its kind, not 'not a PyTorch or safetensors file'."""
    state = timm.create_model("mobilevit_xxs").state_dict()
    save_file(state, tmp_path / "full.safetensors")
    torch.save(state, tmp_path / "full.pth")
    for name, cut in (("full.safetensors", 5000), ("full.safetensors", -1000), ("full.pth", 5000), ("full.pth", -1000)):
        damaged = tmp_path / f"cut{cut}_{name}"
        damaged.write_bytes((tmp_path / name).read_bytes()[:cut])
        kind = "safetensors" if name.endswith(".safetensors") else "PyTorch"
        with pytest.raises(WeightsError, match=f"{damaged.name}: a damaged or truncated {kind} file"):
            create_model("mobilevit_xxs", pretrained=damaged)


@pytest.mark.parametrize("name", list_models())
def test_files_are_read_by_content_not_by_suffix(name: str, tmp_path: Path) -> None:
    """Whatever the name says; mobilevit_xs's safetensors header length happens to start with byte 0x80,
    which is also how a legacy (non-zip) torch.save pickle starts."""
    reference = input_sensitive(timm.create_model(name)).eval()
    save_file(reference.state_dict(), tmp_path / "renamed.pth")
    torch.save(reference.state_dict(), tmp_path / "renamed.safetensors")
    torch.save(reference.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for file in ("renamed.pth", "renamed.safetensors", "legacy.pth"):
        assert_same_logits(reference, create_model(name, pretrained=tmp_path / file).eval(), sizes=(256,))


def test_a_whole_pickled_model_is_refused_with_what_to_save_instead(tmp_path: Path) -> None:
    torch.save(timm.create_model("mobilevit_xxs"), tmp_path / "whole.pth")
    with pytest.raises(WeightsError, match=r"it holds pickled Python objects.*save model\.state_dict\(\)") as err:
        create_model("mobilevit_xxs", pretrained=tmp_path / "whole.pth")
    assert "\x1b[" not in str(err.value)  # none of torch.load's terminal escape codes


@pytest.mark.parametrize(
    ("pretrained", "error", "message"),
    [
        (1, TypeError, "pretrained= takes True, False, a Hugging Face hub id or a local file/folder, got int"),
        ({"stem.conv.weight": torch.zeros(1)}, TypeError, "got dict: to load a state dict you hold, save it"),
        ("", ValueError, "pretrained='' names no file"),
    ],
)
def test_pretrained_of_the_wrong_kind(pretrained: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        create_model("mobilevit_xxs", pretrained=pretrained)  # type: ignore[arg-type]


def test_same_variant_mismatch_does_not_claim_it_is_another_and_fused_weights_are_recognised(tmp_path: Path) -> None:
    from mobilevit_torch.models import fuse_for_inference

    model = create_model("mobilevit_xxs", num_classes=5)
    torch.save(fuse_for_inference(model).state_dict(), tmp_path / "fused.pt")
    with pytest.raises(WeightsError, match="does not match mobilevit_xxs") as err:
        create_model("mobilevit_xxs", pretrained=tmp_path / "fused.pt")
    assert "looks like a mobilevit_xxs" not in str(err.value)
    assert "it looks like the state_dict of a fuse_for_inference copy" in str(err.value)


def test_mobilevit_v2_weights_are_named_as_another_network(tmp_path: Path) -> None:
    """The v2 checkpoints sit beside v1's on the hub; they used to fail as a 'timm layout' key mismatch."""
    save_file(timm.create_model("mobilevitv2_050").state_dict(), tmp_path / "timm_v2.safetensors")
    transformers.MobileViTV2ForImageClassification(transformers.MobileViTV2Config()).save_pretrained(tmp_path / "hf_v2")
    for weights in (tmp_path / "timm_v2.safetensors", tmp_path / "hf_v2"):
        with pytest.raises(WeightsError, match="these weights are MobileViT v2 .* a different network"):
            create_model("mobilevit_xxs", pretrained=weights)


def test_checkpoint_without_weights(tmp_path: Path) -> None:
    torch.save({"format": "mobilevit-torch", "model_name": "mobilevit_xxs"}, tmp_path / "empty.pt")
    with pytest.raises(WeightsError, match=r"empty\.pt is a mobilevit-torch checkpoint that holds no weights"):
        create_model("mobilevit_xxs", pretrained=tmp_path / "empty.pt")


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="no/such/file.pt"):
        create_model("mobilevit_xxs", pretrained="no/such/file.pt")


@pytest.mark.parametrize("name", ["runs/best.pt", "runs/model.safetensors", "weights/last.pth", "tests/nothing"])
def test_local_looking_names_are_not_hub_ids(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``owner/name`` that reads as a local path (a weights suffix, or an existing first folder) is a missing
    file, not a hub download."""
    from mobilevit_torch import hub_ids
    from mobilevit_torch.weights import loading

    monkeypatch.setattr(loading, "_read_hub", lambda *args: pytest.fail(f"{name} was fetched from the hub"))
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert not hub_ids.is_hub_id(name)
    with pytest.raises(FileNotFoundError, match=f"pretrained weights not found: {name}"):
        create_model("mobilevit_xxs", pretrained=name)
    assert hub_ids.is_hub_id("timm/mobilevit_xxs.cvnets_in1k") and hub_ids.is_hub_id("apple/mobilevit-xx-small")


def test_hub_offline_says_how_to_pass_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)
    with pytest.raises(WeightsError, match="timm/mobilevit_xxs.cvnets_in1k") as err:
        read_pretrained("mobilevit_xxs", True)
    # The command named exists in today's huggingface_hub (its huggingface-cli was removed in 1.0).
    assert "hf download timm/mobilevit_xxs.cvnets_in1k --local-dir mobilevit_xxs.cvnets_in1k" in str(err.value)
    assert "pretrained='mobilevit_xxs.cvnets_in1k'" in str(err.value)  # in Python
    assert "pretrained=mobilevit_xxs.cvnets_in1k on the command line" in str(err.value)
    with pytest.raises(WeightsError, match="apple/mobilevit-xx-small"):
        create_model("mobilevit_xxs", pretrained="apple/mobilevit-xx-small")
