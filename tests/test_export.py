"""Export: ONNX + ONNX Runtime parity for every variant, the sidecar, and every way a request can be wrong.

The TFLite conversions (slow: onnx2tf) are in test_export_tflite.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilevit_torch import create_model, list_models
from mobilevit_torch.checkpoint import model_payload, save_checkpoint
from mobilevit_torch.data.folder import make_split
from mobilevit_torch.export import ConversionError, ExportError, ParityError, export_model, open_runner
from mobilevit_torch.export import exporter as exporter_module
from mobilevit_torch.export import formats as formats_module
from mobilevit_torch.export import to_tflite as to_tflite_module
from mobilevit_torch.export.images import balanced, pick_images, random_inputs
from mobilevit_torch.export.parity import compare
from mobilevit_torch.export.request import check_arguments
from mobilevit_torch.export.to_tflite import OFFLINE_GUARD, onnx2tf_sample
from mobilevit_torch.models import MobileViT, MobileViTConfig, StageSpec
from mobilevit_torch.preprocessing import Preprocessing
from tests.conftest import REPO, assert_input_sensitive, input_sensitive

CLASSES = ["cat", "dog", "owl"]

# A MobileViT with every kind of block but one of each, so onnx2tf takes seconds, not a minute.
TINY = MobileViTConfig(
    stem_chs=8,
    expand_ratio=2.0,
    stages=(
        StageSpec(8, 1, 1),
        StageSpec(16, 1, 2),
        StageSpec(16, 1, 2, transformer_dim=16, ffn_dim=32, num_layers=1),
        StageSpec(24, 1, 2, transformer_dim=24, ffn_dim=48, num_layers=1),
        StageSpec(32, 1, 2, transformer_dim=32, ffn_dim=64, num_layers=1),
    ),
    final_chs=64,
)


def make_folder(root: Path, classes: list[str] = CLASSES, per_class: int = 6) -> Path:
    """A tiny ImageFolder of generated photos: a different tint per class, odd sizes, mixed formats."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, size=(72 + 8 * index, 96, 3), dtype=np.uint8)
            pixels[..., label % 3] = np.clip(pixels[..., label % 3].astype(int) + 80, 0, 255)
            suffix = ".png" if index % 2 else ".jpg"
            Image.fromarray(pixels).save(root / name / f"img{index}{suffix}")
    return root


def make_checkpoint(path: Path, name: str = "mobilevit_xxs", classes: list[str] = CLASSES) -> Path:
    """A random-init checkpoint whose logits depend on the image (``input_sensitive``)."""
    model = input_sensitive(create_model(name, num_classes=len(classes)))
    model.class_names = list(classes)
    return save_checkpoint(path, model_payload(model, classes))


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    return {
        "base": base,
        "folder": make_folder(base / "photos"),
        **{name: make_checkpoint(base / f"{name}.pt", name) for name in list_models()},
    }


# -- ONNX: every variant, parity in ONNX Runtime ------------------------------------------------------


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"])
def test_onnx_parity_every_variant(assets: dict[str, Path], tmp_path: Path, name: str) -> None:
    # 160 px: the last stage's 5x5 map is not whole 2x2 patches, so the resize path is exported too.
    img_size = 256 if name == "mobilevit_xxs" else 160
    result = export_model(
        format="onnx",
        checkpoint=assets[name],
        data_root=assets["folder"],
        img_size=img_size,
        check_images=3,
        output=tmp_path / "model.onnx",
    )
    assert result.parity.real_images and result.parity.images == 3
    assert result.parity.max_abs_diff <= 1e-4 and result.parity.passed

    # Independently of export_model's own check: ONNX Runtime against PyTorch on fresh inputs.
    model = create_model(name, pretrained=assets[name]).eval()
    x = torch.rand(1, 3, img_size, img_size) * 2 - 0.5
    with torch.no_grad():
        expected = model(x).numpy()
    got = open_runner(result.path)(x.numpy())
    assert np.abs(got - expected).max() <= 1e-4
    with torch.no_grad():  # the logits depend on the image: a file that read it as BGR would fail
        assert_input_sensitive(torch.from_numpy(expected), model(x.flip(1)))


def test_onnx_dynamic_batch_and_random_inputs(assets: dict[str, Path], tmp_path: Path) -> None:
    result = export_model(
        format="onnx",
        checkpoint=assets["mobilevit_xxs"],
        dynamic_batch=True,
        check_images=3,
        output=tmp_path / "dyn.onnx",
    )
    assert not result.parity.real_images and result.parity.passed
    runner = open_runner(result.path)
    assert runner.describe()["input"]["shape"][0] == "batch"
    model = create_model("mobilevit_xxs", pretrained=assets["mobilevit_xxs"]).eval()
    x = torch.rand(5, 3, 256, 256)
    with torch.no_grad():
        expected = model(x).numpy()
    got = runner.session.run(None, {"input": x.numpy()})[0]  # all 5 in one call
    assert got.shape == (5, 3) and np.abs(got - expected).max() <= 1e-4
    assert_input_sensitive(torch.from_numpy(got[1:]), torch.from_numpy(got[:-1]))  # each image its own logits


def test_sidecar_and_labels(assets: dict[str, Path], tmp_path: Path) -> None:
    result = export_model(
        format="onnx",
        checkpoint=assets["mobilevit_xxs"],
        data_root=assets["folder"],
        check_images=2,
        output_dir=tmp_path,
    )
    assert result.path == tmp_path / "mobilevit_xxs_fp32.onnx"
    assert result.sidecar == tmp_path / "mobilevit_xxs_fp32.onnx.json"
    assert result.labels.read_text().splitlines() == CLASSES
    meta = json.loads(result.sidecar.read_text())
    assert meta["format"] == "onnx" and meta["precision"] == "fp32" and meta["model"] == "mobilevit_xxs"
    assert meta["source"] == str(assets["mobilevit_xxs"])  # the checkpoint it came from, not the model's name
    assert result.labels == tmp_path / "mobilevit_xxs_fp32.onnx.labels.txt"
    assert meta["class_names"] == CLASSES and meta["num_classes"] == 3
    assert meta["labels_file"] == "mobilevit_xxs_fp32.onnx.labels.txt" and "labels.txt order" in meta["output_meaning"]
    assert meta["input"] == {"name": "input", "layout": "NCHW", "shape": [1, 3, 256, 256], "dtype": "float32"}
    assert meta["output"] == {"name": "logits", "shape": [1, 3], "dtype": "float32"}
    expected = create_model("mobilevit_xxs", pretrained=assets["mobilevit_xxs"]).preprocessing
    assert Preprocessing.from_dict({k: v for k, v in meta["preprocessing"].items() if k != "steps"}) == expected
    assert meta["preprocessing"]["steps"] == [
        "decode the image as 8-bit RGB",
        "resize the shorter side to 284 px (bicubic, antialiased)",
        "center-crop 256 x 256",
        "scale pixel values to [0, 1] (divide by 255)",
        "normalise per channel: (x - mean) / std with mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]",
        "keep channels in RGB order",
    ]
    assert meta["parity"]["passed"] and meta["parity"]["max_abs_diff"] == result.parity.max_abs_diff
    assert meta["converter"]["opset"] == 18
    assert meta["converter"]["seconds"] == round(result.seconds, 2) > 0
    size = result.path.stat().st_size
    assert result.size_bytes == size
    assert f"exported onnx fp32 -> {result.path} ({size / 1e6:.2f} MB) in {result.seconds:.1f} s" in result.summary()


def test_sidecar_steps_for_apples_weights() -> None:
    """What an app developer follows for Apple's (and transformers') weights: 288 then 256, BGR."""
    from mobilevit_torch.export.sidecar import preprocessing_recipe
    from mobilevit_torch.preprocessing import APPLE_IMAGENET

    assert preprocessing_recipe(APPLE_IMAGENET)["steps"][1:] == [
        "resize the shorter side to 288 px (bilinear, antialiased)",
        "center-crop 256 x 256",
        "scale pixel values to [0, 1] (divide by 255)",
        "normalise per channel: (x - mean) / std with mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]",
        "reorder channels to BGR",
    ]


def test_exports_sharing_a_folder_keep_their_own_labels(tmp_path: Path) -> None:
    # A 3-class and then a 5-class export into one folder: the first one's sidecar still names its 3 labels.
    five = ["a", "b", "c", "d", "e"]
    first = export_model(format="onnx", checkpoint=make_checkpoint(tmp_path / "three.pt"), check_images=1,
                         output=tmp_path / "out" / "three.onnx")  # fmt: skip
    second = export_model(format="onnx", checkpoint=make_checkpoint(tmp_path / "five.pt", classes=five),
                          check_images=1, output=tmp_path / "out" / "five.onnx")  # fmt: skip
    for result, classes in ((first, CLASSES), (second, five)):
        meta = json.loads(result.sidecar.read_text())
        labels = result.sidecar.parent / meta["labels_file"]
        assert labels == result.labels and labels.read_text().splitlines() == classes == meta["class_names"]
    assert not (tmp_path / "out" / "labels.txt").exists()


def test_best_pt_finds_its_training_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # best.pt carries the run's config (as last.pt does), so its parity check runs on the held-out photos.
    from mobilevit_torch.checkpoint import load_checkpoint
    from mobilevit_torch.training.loop import train
    from tests import train_helpers

    photos = train_helpers.make_folder(tmp_path / "photos", per_class=4, odd_files=False)
    config = train_helpers.tiny_config(tmp_path, photos, epochs=1, plots=False, tensorboard=False,
                                       **{"data.num_workers": 0})  # fmt: skip
    train(config, tmp_path / "run")
    best = tmp_path / "run" / "best.pt"
    payload = load_checkpoint(best)
    assert payload["config"]["data"]["root"] == str(photos)
    assert not {"optimizer", "scaler", "rng", "ema"} & set(payload), "best.pt holds weights, not a resume point"
    with caplog.at_level(logging.INFO, logger="mobilevit_torch"):
        result = export_model(format="onnx", checkpoint=best, check_images=2, output=tmp_path / "best.onnx")
    assert result.parity.real_images and result.parity.images == 2
    assert f"real images from the checkpoint's data folder {photos}" in caplog.text


def test_flowers_checkpoint_finds_the_class_folders_training_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """data=flowers stores data.root (data/flowers); training split its flower_photos/ folder, and so must export
    (it used to read data/flowers as one class 'flower_photos', so its "held-out" images were training photos)."""
    root = tmp_path / "flowers"
    photos = make_folder(root / "flower_photos")
    (root / "LICENSE.txt").write_text("the dataset's licence")
    checkpoint = make_checkpoint(tmp_path / "m.pt")
    payload = torch.load(checkpoint, weights_only=False)
    payload["config"] = {"seed": 0, "data": {"kind": "flowers", "root": str(root), "val_fraction": 0.1}}
    save_checkpoint(checkpoint, payload)
    with caplog.at_level(logging.INFO, logger="mobilevit_torch"):
        result = export_model(format="onnx", checkpoint=checkpoint, check_images=3, output=tmp_path / "m.onnx")
    assert f"real images from the checkpoint's data folder {photos}" in caplog.text
    assert "not the model's" not in caplog.text
    assert result.parity.real_images and result.parity.images == 3
    # A folder of other classes is used as asked, with a warning that names both lists.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mobilevit_torch"):
        export_model(format="onnx", checkpoint=checkpoint, check_images=3, data_root=root, output=tmp_path / "o.onnx")
    assert f"data.root {root} holds the classes [flower_photos], not the model's [cat, dog, owl]" in caplog.text


def test_check_images_are_the_training_runs_validation_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint's data folder is split with the run's own seed and val_fraction (not make_split's defaults),
    so the parity check runs on exactly the photos that run held out."""
    photos = make_folder(tmp_path / "photos")
    checkpoint = make_checkpoint(tmp_path / "m.pt")
    payload = torch.load(checkpoint, weights_only=False)
    payload["config"] = {"seed": 7, "data": {"root": str(photos), "val_fraction": 0.5}}
    save_checkpoint(checkpoint, payload)
    held_out = {sample.path for sample in make_split(photos, seed=7, val_fraction=0.5).val}
    assert len(held_out) == 9  # 3 of each class's 6
    assert held_out != {sample.path for sample in make_split(photos, seed=0, val_fraction=0.5).val}
    loaded: list[set[str]] = []
    real = exporter_module.load_images

    def recording(samples: list, preprocessing: Preprocessing) -> tuple[torch.Tensor, list[int]]:
        loaded.append({sample.path for sample in samples})
        return real(samples, preprocessing)

    monkeypatch.setattr(exporter_module, "load_images", recording)
    result = export_model(format="onnx", checkpoint=checkpoint, check_images=20, img_size=64,
                          output=tmp_path / "m.onnx")  # fmt: skip
    assert loaded == [held_out]  # fp32 loads the check images only
    assert result.parity.real_images and result.parity.images == 9


def test_img_size_changes_the_recorded_preprocessing(assets: dict[str, Path], tmp_path: Path) -> None:
    result = export_model(format="onnx", checkpoint=assets["mobilevit_xxs"], img_size=192, check_images=1,
                          output=tmp_path / "m.onnx", opset=20)  # fmt: skip
    meta = json.loads(result.sidecar.read_text())
    assert meta["input"]["shape"] == [1, 3, 192, 192]
    assert meta["preprocessing"]["input_size"] == 192 and meta["preprocessing"]["resize_size"] == 213
    assert meta["converter"]["opset"] == 20


def test_parity_failure_is_an_error(assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that fails its parity check is kept beside the output path, never at it: an earlier
    export there is put back, and without one the path stays free."""
    out = tmp_path / "m.onnx"
    good = export_model(format="onnx", checkpoint=assets["mobilevit_xxs"], check_images=1, output=out)
    earlier = {file.name: file.read_bytes() for file in tmp_path.iterdir()}
    real = exporter_module.pytorch_logits
    monkeypatch.setattr(exporter_module, "pytorch_logits", lambda model, images: real(model, images) + 1e-3)
    for _ in range(2):  # a second failure replaces the first one's files
        with pytest.raises(ParityError, match=r"max \|Δ\| 1\.00e-03 \(≤ 1e-04 FAILED\)") as info:
            export_model(format="onnx", checkpoint=assets["mobilevit_xxs"], check_images=1, output=out)
        assert "Kept for inspection as m.parity-failed.onnx" in str(info.value)
        assert f"the earlier {good.path.name}, {good.sidecar.name}, {good.labels.name} is back" in str(info.value)
        assert {file.name: file.read_bytes() for file in tmp_path.iterdir() if ".parity-failed." not in file.name} == (
            earlier
        )
    failed = sorted(file.name for file in tmp_path.iterdir() if ".parity-failed." in file.name)
    assert failed == ["m.parity-failed.onnx", "m.parity-failed.onnx.json", "m.parity-failed.onnx.labels.txt"]
    meta = json.loads((tmp_path / "m.parity-failed.onnx.json").read_text())
    assert meta["file"] == "m.parity-failed.onnx" and meta["parity"]["passed"] is False

    fresh = tmp_path / "new" / "m.onnx"
    with pytest.raises(ParityError) as info:
        export_model(format="onnx", checkpoint=assets["mobilevit_xxs"], check_images=1, output=fresh)
    assert "back in place" not in str(info.value)
    assert sorted(file.name for file in fresh.parent.iterdir()) == failed


def _disk_full(model: object, path: Path, **kwargs: object) -> Path:
    """An ONNX writer that runs out of space half-way through the file."""
    path.write_bytes(b"\x08\x09 half an onnx file")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["the model file", "a sidecar"])
def test_a_write_that_fails_leaves_no_file(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    out = tmp_path / "m.onnx"
    if failing == "the model file":
        monkeypatch.setattr(formats_module, "export_onnx", _disk_full)
        message = rf"could not write the export in {re.escape(str(tmp_path))} \(No space left on device\); removed"
    else:

        def denied(*args: object, **kwargs: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(out) + ".json")

        monkeypatch.setattr(exporter_module, "write_sidecar", denied)
        message = rf"could not write {re.escape(str(out))}\.json \(Permission denied\); removed the partial m\.onnx$"
    with pytest.raises(ConversionError, match=message):
        export_model(format="onnx", checkpoint=assets["mobilevit_xxs"], check_images=1, output=out)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_the_earlier_one_in_place(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m.onnx"
    export_model(format="onnx", checkpoint=assets["mobilevit_xxs"], check_images=1, output=out)
    earlier = {file.name: file.read_bytes() for file in tmp_path.iterdir()}
    assert sorted(earlier) == ["m.onnx", "m.onnx.json", "m.onnx.labels.txt"]

    monkeypatch.setattr(formats_module, "export_onnx", _disk_full)
    with pytest.raises(ConversionError, match=r"removed the partial m\.onnx; the earlier m\.onnx, m\.onnx\.json, "):
        export_model(format="onnx", checkpoint=assets["mobilevit_xxs"], check_images=1, output=out)
    assert {file.name: file.read_bytes() for file in tmp_path.iterdir()} == earlier  # nothing else left either

    monkeypatch.undo()  # a good export replaces the earlier one and leaves nothing set aside
    export_model(format="onnx", checkpoint=assets["mobilevit_xxs"], check_images=1, output=out, seed=1)
    assert sorted(file.name for file in tmp_path.iterdir()) == sorted(earlier)
    assert (tmp_path / "m.onnx.json").read_bytes() != earlier["m.onnx.json"]


def test_cli_write_failure_is_one_line(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    code = (
        "import runpy, sys, tests.test_export as t\n"
        "from mobilevit_torch.export import formats\n"
        "formats.export_onnx = t._disk_full\n"
        f"sys.argv = ['export.py', 'format=onnx', 'checkpoint={assets['mobilevit_xxs']}', 'output={out}',"
        f" 'check_images=1', 'hydra.run.dir={tmp_path / 'run'}']\n"
        "runpy.run_path('export.py', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: could not write the export in {tmp_path} (No space left on device); removed the partial m.onnx"
    )
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []


def test_conversion_log_that_cannot_be_kept_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "convert.log"
    log.write_text("onnx2tf said a great deal")

    def full(source: Path, target: Path) -> None:
        Path(target).write_text("onnx2tf")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(to_tflite_module.shutil, "copyfile", full)
    said = to_tflite_module._keep_log(log, {"fp32": tmp_path / "m.tflite"})
    assert said == f"not kept (copying it to {tmp_path} failed: No space left on device)"
    assert not (tmp_path / "m.tflite.convert.log").exists()


# -- bad requests: refused before any work, with one line -----------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "coreml"}, "unknown format 'coreml': choose one of onnx, tflite"),
        ({"format": "onnx", "precision": "int8"}, "format=onnx does not support precision=int8.*format=tflite"),
        (
            {"format": "tflite", "precision": "int4"},
            re.escape("does not support precision=int4: choose fp32|fp16|int8_dynamic|int8_mixed|int8") + "$",
        ),
        ({"format": "onnx", "opset": 17}, "opset must be between 18 and 23, got 17"),
        ({"format": "onnx", "opset": "18"}, "opset must be an integer"),
        ({"format": "onnx", "img_size": 100}, "img_size must be a multiple of 32"),
        ({"format": "onnx", "img_size": 48}, "img_size must be a multiple of 32"),  # of 16, not of 32
        ({"format": "onnx", "opset": 24}, "opset must be between 18 and 23, got 24"),
        ({"format": "onnx", "check_images": 0}, "check_images must be >= 1"),
        ({"format": "onnx", "dynamic_batch": "yes"}, "dynamic_batch must be true or false"),
        ({"format": "onnx", "img_size": True}, "img_size must be an integer"),
        ({"format": "tflite", "dynamic_batch": True}, "dynamic_batch applies to format=onnx"),
        ({"format": "onnx", "calib_images": 0}, "calib_images must be >= 1"),
        ({"format": "onnx", "output": "model.tflite"}, r"must end in \.onnx"),
        ({"format": "onnx", "data_root": "/no/such/folder"}, "data.root: no such folder"),
        ({"format": "onnx"}, "nothing to export: pass checkpoint=PATH"),
        ({"format": "onnx", "model": "xxx"}, "unknown model 'xxx': choose one of s, xs, xxs"),
        ({"format": "onnx", "model": "xxs", "num_classes": 0}, "num_classes must be a positive integer"),
        ({"format": "onnx", "model": "xxs", "num_classes": "abc"}, "num_classes must be a positive integer, got 'abc'"),
        ({"format": "onnx", "model": "xxs", "seed": "abc"}, "seed must be an integer, got 'abc'"),
        ({"format": "onnx", "model": "xxs", "seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"format": "onnx", "model": "xxs", "seed": -1}, "seed must be >= 0, got -1"),
        ({"format": "onnx", "model": "xxs", "pretrained": "/no/weights.pt"}, "pretrained weights not found"),
        # owner/name, but a weights file's name: a missing local file, not a hub repository to download
        ({"format": "onnx", "model": "xxs", "pretrained": "runs/best.pt"}, "pretrained weights not found: runs/best"),
        ({"format": "onnx", "checkpoint": "/no/such/best.pt"}, "checkpoint not found: /no/such/best.pt"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exporter_module, "load_model", _no_work)
    with pytest.raises(ExportError, match=message):
        export_model(**kwargs)


@pytest.mark.parametrize("where", ["under a file", "in /proc", "a folder"])
def test_unwritable_output_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "dir.onnx").mkdir()
    output, message = {
        "under a file": (tmp_path / "file" / "sub" / "m.onnx", f"{tmp_path / 'file'} is a file, not a folder"),
        "in /proc": (Path("/proc/x/m.onnx"), "cannot create the folder /proc/x"),
        "a folder": (tmp_path / "dir.onnx", "is a folder: name the file, e.g. output="),
    }[where]
    monkeypatch.setattr(exporter_module, "load_model", _no_work)
    with pytest.raises(ExportError, match=re.escape(message)):
        export_model(format="onnx", model="xxs", output=output)


def test_output_folder_check_without_torch_leaves_nothing_behind(tmp_path: Path) -> None:
    check_arguments(format="onnx", model="xxs", output=tmp_path / "new" / "sub" / "m.onnx")
    check_arguments(format="onnx", model="xxs", output=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == [], "the torch-free check probes the folder without creating it"


def test_checkpoint_errors(assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = assets["mobilevit_xxs"]
    with pytest.raises(ExportError, match=r"holds a mobilevit_xxs checkpoint, not mobilevit_xs"):
        export_model(format="onnx", checkpoint=ckpt, model="xs")
    with pytest.raises(ExportError, match=r"num_classes=7 does not match the checkpoint's 3 classes"):
        export_model(format="onnx", checkpoint=ckpt, num_classes=7)
    with pytest.raises(ExportError, match=r"either checkpoint=PATH or pretrained=PATH"):
        export_model(format="onnx", checkpoint=ckpt, pretrained=ckpt)
    with pytest.raises(ExportError, match=r"is a folder"):
        export_model(format="onnx", checkpoint=tmp_path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match=r"cannot read .*garbage\.pt"):
        export_model(format="onnx", checkpoint=garbage)
    plain = tmp_path / "state_dict.pt"
    torch.save(create_model("mobilevit_xxs").state_dict(), plain)
    with pytest.raises(ExportError, match=r"not a mobilevit-torch training checkpoint.*pretrained="):
        export_model(format="onnx", checkpoint=plain)

    # The same for pretrained= weights with another classifier size: refused, not re-initialised at random.
    monkeypatch.setattr(exporter_module, "load_model", _no_work)
    with pytest.raises(ExportError, match=r"num_classes=7 does not match the 3 classes of the weights .*drop num_"):
        export_model(format="onnx", model="xxs", pretrained=ckpt, num_classes=7, output=tmp_path / "never.onnx")
    with pytest.raises(AssertionError, match="the model was loaded"):  # a matching size passes the checks
        export_model(format="onnx", model="xxs", pretrained=ckpt, num_classes=3, output=tmp_path / "never.onnx")
    monkeypatch.undo()

    no_weights = tmp_path / "no_weights.pt"
    torch.save({"format": "mobilevit-torch", "model_name": "mobilevit_xxs"}, no_weights)
    with pytest.raises(ExportError, match=r"no_weights\.pt holds no weights"):
        export_model(format="onnx", checkpoint=no_weights)
    with pytest.raises(ExportError, match=r"no_weights\.pt is a mobilevit-torch checkpoint that holds no weights"):
        export_model(format="onnx", model="xxs", pretrained=no_weights, output=tmp_path / "never.onnx")

    # A checkpoint whose weights do not fit the model it names: an XS state dict labelled XXS.
    payload = torch.load(assets["mobilevit_xs"], weights_only=True)
    payload["model_name"] = "mobilevit_xxs"
    wrong = save_checkpoint(tmp_path / "wrong.pt", payload)
    with pytest.raises(ExportError, match=r"does not match mobilevit_xxs; it looks like a mobilevit_xs checkpoint"):
        export_model(format="onnx", checkpoint=wrong, output=tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()


@pytest.mark.parametrize("precision", ["int8", "int8_mixed"])
def test_int8_needs_real_images(assets: dict[str, Path], precision: str) -> None:
    with pytest.raises(ExportError, match=rf"precision={precision} is calibrated on real images: pass data.root=PATH"):
        export_model(format="tflite", precision=precision, checkpoint=assets["mobilevit_xxs"])


def test_missing_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx2tf" else find_spec(name))
    with pytest.raises(ExportError) as error:
        export_model(format="tflite", model="xxs")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("format=tflite needs ") and "onnx2tf" in message.split(", not installed")[0]
    python = shlex.quote(sys.executable)
    assert message.endswith(
        f"not installed (from the repository root): {python} -m pip install -e '.[onnx]' && "
        f"bash scripts/install_export_deps.sh {python}"
    ), message
    assert (REPO / "scripts" / "install_export_deps.sh").is_file()
    # ONNX alone needs the [onnx] extra, not TensorFlow.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name))
    with pytest.raises(ExportError) as error:
        export_model(format="onnx", model="xxs")
    assert str(error.value).endswith(f"not installed (from the repository root): {python} -m pip install -e '.[onnx]'")


def _no_work(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model was loaded although the arguments are invalid")


# -- pieces -------------------------------------------------------------------------------------------


def test_images_are_split_and_balanced(assets: dict[str, Path]) -> None:
    picked = pick_images(assets["folder"], calib_images=6, check_images=3)
    assert picked.class_names == CLASSES
    assert sorted(s.label for s in picked.check) == [0, 1, 2]  # one held-out photo per class
    assert [s.label for s in picked.calibration] == [0, 1, 2, 0, 1, 2]
    assert not {s.path for s in picked.check} & {s.path for s in picked.calibration}
    assert balanced(picked.calibration, 100, seed=0) != [] and len(balanced(picked.calibration, 4, seed=0)) == 4


def test_random_inputs_are_normalised_like_real_images() -> None:
    """Without a folder the parity check runs on uniform [0, 1) pixels put through the model's mean and std."""
    pre = Preprocessing(input_size=32, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = (pixels - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    torch.testing.assert_close(random_inputs(4, pre, seed=3), expected, atol=0, rtol=0)


def test_compare_tolerances() -> None:
    reference = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]], dtype=np.float32)
    assert compare(reference, reference + 5e-5, precision="fp32", real_images=True).passed
    assert not compare(reference, reference + 2e-4, precision="fp32", real_images=True).passed
    assert compare(reference, reference + 5e-3, precision="fp16", real_images=True).passed
    assert not compare(reference, reference + 2e-2, precision="fp16", real_images=True).passed
    swapped = reference.copy()
    swapped[0] = [2.0, 1.0, 0.0]
    int8 = compare(reference, swapped, precision="int8", real_images=True)
    assert int8.passed and int8.top1_agreement == 0.5 and not int8.meets_aim  # reported, not failed
    assert ", BELOW)" in int8.summary() and "top-1 agreement 50.0%" in int8.summary()
    one_off = reference.copy()
    one_off[1, 2] += 2e-4  # one logit of six: the largest difference decides, not the mean
    report = compare(reference, one_off, precision="fp32", real_images=True)
    assert report.max_abs_diff == pytest.approx(2e-4, rel=1e-3) and not report.passed
    assert "max |Δ| 2.00e-04 (≤ 1e-04 FAILED)" in report.summary()


def test_onnx2tf_sample_shape() -> None:
    sample = onnx2tf_sample(torch.rand(3, 3, 256, 256))
    assert sample.shape == (20, 128, 128, 3) and sample.dtype == np.float32
    assert np.array_equal(sample[0], sample[3])  # 3 images repeated to fill 20


def test_offline_guard_blocks_network(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(OFFLINE_GUARD)
    code = (
        "import socket\n"
        "for call in (lambda: socket.create_connection(('192.0.2.1', 80), timeout=1),\n"
        "             lambda: socket.getaddrinfo('example.com', 443),\n"
        "             lambda: socket.socket(socket.AF_INET6).connect(('::1', 9))):\n"
        "    try:\n        call()\n    except OSError as e:\n        assert 'network access is disabled' in str(e), e\n"
        "    else:\n        raise SystemExit('connected')\n"
        "a, b = socket.socketpair(); a.sendall(b'ok'); assert b.recv(2) == b'ok'\n"  # local IPC still works
        "print('blocked')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "blocked"


def test_export_onnx_writes_one_file_of_the_eval_model(tmp_path: Path) -> None:
    """export_onnx on its own: a model left in training mode is exported in eval mode (BatchNorm's running
    statistics, not the batch's), and the weights are inside the one file written (no external data beside it)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mobilevit_torch.export.to_onnx import export_onnx

    torch.manual_seed(0)
    model = input_sensitive(MobileViT(TINY, num_classes=3)).train()
    path = export_onnx(model, tmp_path / "m.onnx", img_size=64)
    assert list(tmp_path.iterdir()) == [path]
    initializers = onnx.load(str(path), load_external_data=False).graph.initializer
    assert initializers and not [i.name for i in initializers if i.data_location == onnx.TensorProto.EXTERNAL]
    x = torch.rand(2, 3, 64, 64)
    session = ort.InferenceSession(str(path))
    got = np.concatenate([session.run(None, {"input": image[None].numpy()})[0] for image in x])
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert np.abs(got - expected).max() <= 1e-4


def test_export_onnx_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A converter failure is a one-line ConversionError; a failed write stays an OSError: the caller names the file."""
    pytest.importorskip("onnx")
    from mobilevit_torch.export.to_onnx import export_onnx

    def fails(error: BaseException) -> object:
        def export(*args: object, **kwargs: object) -> None:
            raise error

        return export

    model = MobileViT(TINY, num_classes=3)
    monkeypatch.setattr(torch.onnx, "export", fails(RuntimeError("no ONNX for aten::foo\n  a long trace")))
    with pytest.raises(ConversionError, match=r"^ONNX export failed: RuntimeError: no ONNX for aten::foo$"):
        export_onnx(model, tmp_path / "m.onnx", img_size=64)
    monkeypatch.setattr(torch.onnx, "export", fails(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError, match="No space left on device") as error:
        export_onnx(model, tmp_path / "m.onnx", img_size=64)
    assert not isinstance(error.value, ConversionError)


def test_checkpoint_data_root_only_names_a_folder_that_is_here(tmp_path: Path) -> None:
    """A checkpoint trained on another machine names a data.root that is not here: no folder, random inputs."""
    from mobilevit_torch.export.source import ModelSource, checkpoint_data_root

    def source(data: object) -> ModelSource:
        return ModelSource("mobilevit_xxs", checkpoint=tmp_path / "m.pt", training_config={"data": data})

    assert checkpoint_data_root(source({"root": str(tmp_path)})) == tmp_path
    assert checkpoint_data_root(source({"root": str(tmp_path / "elsewhere")})) is None
    (tmp_path / "file.txt").write_text("not a folder")
    assert checkpoint_data_root(source({"root": str(tmp_path / "file.txt")})) is None
    assert checkpoint_data_root(source({"root": ""})) is None and checkpoint_data_root(source(None)) is None


def test_model_source_describes_its_weights(tmp_path: Path) -> None:
    """The sidecar's ``source``: the checkpoint, the pretrained weights, or the warning that there are none."""
    from mobilevit_torch.export.source import ModelSource

    assert ModelSource("mobilevit_xs", checkpoint=tmp_path / "m.pt").describe() == str(tmp_path / "m.pt")
    assert ModelSource("mobilevit_xs", pretrained="apple/mobilevit-x-small").describe() == (
        "mobilevit_xs with weights apple/mobilevit-x-small"
    )
    assert ModelSource("mobilevit_xs").describe() == "mobilevit_xs (random initialisation)"


# What tflite_worker.py does, played by a script: follows FAKE_WORKER (ok, fail, timeout) and reports its request.
FAKE_WORKER = """
import json, os, socket, sys, time

open(os.environ["FAKE_WORKER_PID"], "w").write(str(os.getpid()))
request = json.loads(open(sys.argv[1]).read())
mode = os.environ["FAKE_WORKER"]
assert getattr(socket.socket.connect, "offline_guard", False), "no offline guard"
with open(request["progress"], "a") as progress:
    progress.write("loading\\nconverting: ha")
    progress.flush()
    time.sleep(2.5 if mode == "ok" else 0)  # the parent reads the half-written line meanwhile
    progress.write("lf of it\\n")
if mode == "timeout":
    time.sleep(30)
if mode == "fail":
    print("WARNING: an error it recovered from")
    print("ValueError: the real cause")
    print("exiting")
    sys.exit(1)
for target in request["outputs"].values():
    open(target, "w").write("tflite")
import numpy as np

calibration = request["calibration"] and list(np.load(request["calibration"]).shape)
json.dump({"outputs": sorted(request["outputs"]), "calibration": calibration, "tflite_seconds": {}},
          open(request["result"], "w"))
"""


@pytest.fixture
def fake_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """convert_onnx_to_tflite with FAKE_WORKER in place of the worker (no TensorFlow needed); the file of its pid."""
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    monkeypatch.setattr(to_tflite_module, "WORKER", worker)
    monkeypatch.setattr(to_tflite_module, "require_modules", lambda *args, **kwargs: None)
    monkeypatch.setattr(to_tflite_module, "onnxsim_executable", lambda: sys.executable)
    monkeypatch.setenv("FAKE_WORKER_PID", str(tmp_path / "pid"))
    return tmp_path / "pid"


def test_conversion_process(
    fake_worker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The parent's side of the conversion: offline worker, whole stage lines, calibration only for int8, a
    failure's telling log line and kept log, a timeout that stops the worker."""
    convert = to_tflite_module.convert_onnx_to_tflite
    sample = np.zeros((20, 128, 128, 3), np.float32)
    calibration = np.zeros((5, 64, 64, 3), np.float32)
    for empty in (None, calibration[:0]):  # int8 without images: refused before any work
        with pytest.raises(ExportError, match="precision=int8 needs real calibration images"):
            convert(tmp_path / "m.onnx", {"int8": tmp_path / "m.tflite"}, sample=sample, calibration=empty)

    monkeypatch.setenv("FAKE_WORKER", "ok")
    outputs = {"fp32": tmp_path / "out" / "m_fp32.tflite", "int8": tmp_path / "out" / "m_int8.tflite"}
    with caplog.at_level(logging.INFO, logger="mobilevit_torch"):
        result = convert(tmp_path / "m.onnx", outputs, sample=sample, calibration=calibration)
    assert [r.getMessage() for r in caplog.records] == ["tflite: loading", "tflite: converting: half of it"]
    assert result["outputs"] == ["fp32", "int8"] and result["calibration"] == [5, 64, 64, 3]
    assert all(path.read_text() == "tflite" for path in outputs.values())
    result = convert(tmp_path / "m.onnx", {"fp32": outputs["fp32"]}, sample=sample, calibration=calibration)
    assert result["calibration"] is None  # fp32 is not calibrated

    monkeypatch.setenv("FAKE_WORKER", "fail")
    failed = tmp_path / "failed" / "m.tflite"
    message = f"failed (exit status 1): ValueError: the real cause; log: {failed}.convert.log"
    with pytest.raises(ConversionError, match=re.escape(message) + "$"):
        convert(tmp_path / "m.onnx", {"fp32": failed}, sample=sample)
    assert "ValueError: the real cause" in Path(f"{failed}.convert.log").read_text()

    monkeypatch.setenv("FAKE_WORKER", "timeout")
    with pytest.raises(ConversionError, match="TFLite conversion stopped after 2 s; log: "):
        convert(tmp_path / "m.onnx", {"fp32": tmp_path / "late.tflite"}, sample=sample, timeout_s=2)
    with pytest.raises(ProcessLookupError):  # the worker was stopped too
        os.kill(int(fake_worker.read_text()), 0)


def _fake_tensorflow() -> tuple[object, list]:
    """Just enough of ``tf`` for the worker's ``_convert``; the list collects the converters it made."""
    from types import SimpleNamespace

    made: list = []

    def from_keras_model(model: object) -> SimpleNamespace:
        converter = SimpleNamespace(target_spec=SimpleNamespace(supported_ops=None), optimizations=[])
        converter.convert = lambda: b"tflite"
        made.append(converter)
        return converter

    lite = SimpleNamespace(
        TFLiteConverter=SimpleNamespace(from_keras_model=from_keras_model),
        OpsSet=SimpleNamespace(TFLITE_BUILTINS="BUILTINS", TFLITE_BUILTINS_INT8="BUILTINS_INT8", SELECT_TF_OPS="FLEX"),
        Optimize=SimpleNamespace(DEFAULT="DEFAULT"),
    )
    return SimpleNamespace(lite=lite, int8="int8"), made


def test_worker_converter_settings(tmp_path: Path) -> None:
    """Builtin ops only (never Flex) for every precision; full int8 calibrated on every image, one at a time."""
    from mobilevit_torch.export.tflite_worker import _convert

    tf, made = _fake_tensorflow()
    images = np.random.default_rng(0).random((7, 32, 32, 3), dtype=np.float32)
    np.save(tmp_path / "calibration.npy", images)
    assert _convert(tf, None, "fp32", None) == b"tflite"
    assert made[-1].target_spec.supported_ops == ["BUILTINS"] and made[-1].optimizations == []
    _convert(tf, None, "int8_dynamic", None)
    assert made[-1].target_spec.supported_ops == ["BUILTINS"] and made[-1].optimizations == ["DEFAULT"]
    assert not hasattr(made[-1], "representative_dataset")
    _convert(tf, None, "int8", str(tmp_path / "calibration.npy"))
    int8 = made[-1]
    assert int8.target_spec.supported_ops == ["BUILTINS_INT8"] and int8.optimizations == ["DEFAULT"]
    assert int8.inference_input_type == int8.inference_output_type == "int8"
    batches = [batch for (batch,) in int8.representative_dataset()]
    assert [batch.shape for batch in batches] == [(1, 32, 32, 3)] * 7
    np.testing.assert_array_equal(np.concatenate(batches), images)
    with pytest.raises(ValueError, match="needs calibration images"):
        _convert(tf, None, "int8", None)


def test_worker_refuses_to_run_without_the_offline_guard(tmp_path: Path) -> None:
    """Run without the parent's sitecustomize (so onnx2tf could download), the worker stops before any work."""
    request = {"progress": str(tmp_path / "progress.txt")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = subprocess.run(
        [sys.executable, str(to_tflite_module.WORKER), str(tmp_path / "request.json")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3 and "the offline guard (sitecustomize) is not active" in done.stderr
    assert not (tmp_path / "progress.txt").exists()


def test_fp16_candidates_are_the_large_float32_constants() -> None:
    """Only constant float32 tensors of at least MIN_ELEMENTS values (weights) may be halved; biases stay float32."""
    from types import SimpleNamespace

    from mobilevit_torch.export.tflite_fp16 import FLOAT16, FLOAT32, MIN_ELEMENTS, candidates

    buffers = [SimpleNamespace(data=None)] + [SimpleNamespace(data=b"\0" * 4 * n) for n in (MIN_ELEMENTS, 255, 4096)]
    tensors = [
        SimpleNamespace(type=FLOAT32, buffer=1),  # a weight of exactly MIN_ELEMENTS values
        SimpleNamespace(type=FLOAT32, buffer=2),  # a bias: 255 values
        SimpleNamespace(type=FLOAT16, buffer=3),  # already half
        SimpleNamespace(type=FLOAT32, buffer=0),  # an activation: no data
        SimpleNamespace(type=FLOAT32, buffer=3),
    ]
    model = SimpleNamespace(buffers=buffers, subgraphs=[SimpleNamespace(tensors=tensors)])
    assert candidates(model) == [0, 4]


def test_fp16_choice_halves_the_cheapest_weights_per_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over budget, the weights are halved cheapest-first (logit change per byte saved), as many as the budget allows;
    played with made-up costs: the logit change of a file is the sum of its halved tensors' own."""
    pytest.importorskip("ai_edge_litert", reason="LiteRT is not installed (scripts/install_export_deps.sh)")
    from types import SimpleNamespace

    from ai_edge_litert.tools import flatbuffer_utils

    from mobilevit_torch.export import tflite_fp16
    from mobilevit_torch.export.tflite_fp16 import FLOAT32, MIN_ELEMENTS

    effect = {0: 1e-3, 1: 4e-3, 2: 4e-3, 3: 1e-2}  # tensor 2 is 4 times larger: per byte it is cheaper than 1
    sizes = {0: 1, 1: 1, 2: 4, 3: 1}
    weights = [SimpleNamespace(data=b"\0" * 4 * MIN_ELEMENTS * n) for n in sizes.values()]
    buffers = [SimpleNamespace(data=None), *weights]  # buffer 0: the empty one
    tensors = [SimpleNamespace(type=FLOAT32, buffer=i + 1) for i in effect]
    model = SimpleNamespace(buffers=buffers, subgraphs=[SimpleNamespace(tensors=tensors)])
    monkeypatch.setattr(flatbuffer_utils, "read_model_from_bytearray", lambda content: model)
    monkeypatch.setattr(tflite_fp16, "with_float16", lambda fp32, halved: fp32 + b":" + bytes(sorted(halved)))

    def logits_on(probe: np.ndarray, threads: int = 2) -> object:
        return lambda content: np.full((len(probe), 2), sum(effect[i] for i in content.partition(b":")[2]))

    monkeypatch.setattr(tflite_fp16, "logits_on", logits_on)
    probe = np.zeros((3, 32, 32, 3), np.float32)
    content, report = tflite_fp16.choose_float16(b"fp32", probe, budget=6e-3)
    assert content == b"fp32:" + bytes([0, 2])  # 0 then 2 (5e-3); adding 1 would make 9e-3
    assert report["float16_tensors"] == 2 and report["float32_tensors_kept"] == 2
    assert report["float32_bytes_kept"] == 2 * 4 * MIN_ELEMENTS
    assert report["probe_max_abs_diff_vs_fp32"] == pytest.approx(5e-3)
    assert tflite_fp16.choose_float16(b"fp32", probe, budget=1.0)[0] == b"fp32:" + bytes([0, 1, 2, 3])
    assert tflite_fp16.choose_float16(b"fp32", probe, budget=1e-4)[0] == b"fp32"


# -- the command line ----------------------------------------------------------------------------------


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "export.py", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["formt=onnx"], "error: unknown option 'formt' (did you mean 'format'?)"),
        (["data.rot=x"], "error: unknown option 'data.rot' (did you mean 'data.root'?)"),
        (["model=xxx"], "error: unknown model 'xxx' (did you mean model=xxs?): choose model=s|xs|xxs"),
        (["format=onnx", "precision=int8", "model=xxs"], "error: format=onnx does not support precision=int8"),
        (["format=onnx", "checkpoint=/no/such.pt"], "error: checkpoint not found: /no/such.pt"),
        (["format=onnx", "model=xxs", "opset=abc"], "error: opset must be an integer, got 'abc'"),
        (["format=onnx", "model=xxs", "seed=abc"], "error: seed must be an integer, got 'abc'"),
        (["format=onnx", "model=xxs", "num_classes=abc"], "error: num_classes must be a positive integer, got 'abc'"),
        (["format=onnx", "model=xxs", "output=/proc/x/m.onnx"], "error: output=/proc/x/m.onnx: cannot create"),
    ],
)
def test_cli_user_errors_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    done = _cli(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr
    assert not (tmp_path / "run").exists(), "a refused export leaves no run folder behind"
    assert done.stderr.strip().startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["model=xxs", "opset=abc"], "opset must be an integer, got 'abc'"),
        (["checkpoint=runs/missing.pt"], "checkpoint not found: runs/missing.pt"),
        (["model=xxs", "pretrained=runs/b.pt"], "pretrained weights not found: runs/b.pt (no such file or folder)"),
        (["model=xxs", "output=/proc/x/m.onnx"], "output=/proc/x/m.onnx: cannot create the folder /proc/x ("),
        (["model=xxs", "num_classes=0"], "num_classes must be a positive integer, got 0"),
    ],
)
def test_cli_argument_errors_are_told_before_torch_is_imported(
    arguments: list[str], message: str, tmp_path: Path
) -> None:
    argv = ["export.py", "format=onnx", *arguments, f"hydra.run.dir={tmp_path}/run"]
    code = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_path('export.py', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-2:] == ["exit 2", "torch imported: False"], done.stdout + done.stderr
    assert done.stderr.strip().startswith(f"error: {message}") and len(done.stderr.strip().splitlines()) == 1


def test_cli_exports(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli" / "m.onnx"
    done = _cli("format=onnx", f"checkpoint={assets['mobilevit_xxs']}", f"output={out}", "check_images=2",
                f"data.root={assets['folder']}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"exported onnx fp32 -> {out} (")
    assert "top-1 agreement 100.0% on 2 real images" in done.stdout
    assert out.is_file() and (out.parent / "m.onnx.labels.txt").is_file() and (out.parent / "m.onnx.json").is_file()
    assert not (tmp_path / "run").exists(), "Hydra's run folder is removed when output= puts the file elsewhere"


def test_cli_paths_hydra_cannot_parse(assets: dict[str, Path], tmp_path: Path) -> None:
    """Non-ASCII letters, spaces and parentheses in paths: quoted for Hydra, so the files are found and written."""
    checkpoint = tmp_path / "runs" / "été (1)" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(assets["mobilevit_xxs"].read_bytes())
    out = tmp_path / "モデル (2)" / "m.onnx"
    done = _cli("format=onnx", f"checkpoint={checkpoint}", f"output={out}", "check_images=1",
                f"hydra.run.dir={tmp_path / 'run é'}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"exported onnx fp32 -> {out} (") and out.is_file()


def test_cli_writes_only_the_export(assets: dict[str, Path], tmp_path: Path) -> None:
    """Run from a fresh folder with the default run directory: a failed export leaves nothing behind (no
    outputs/export/<time>/.hydra), a successful one the file and its two sidecars only."""

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(REPO / "export.py"), "format=onnx", "check_images=1", *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    failed = export("checkpoint=no_such.pt")
    assert failed.returncode == 2 and "checkpoint not found" in failed.stderr, failed.stderr
    assert list(tmp_path.iterdir()) == []
    done = export(f"checkpoint={assets['mobilevit_xxs']}")
    assert done.returncode == 0, done.stderr
    written = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if not path.is_dir())
    assert [path.name for path in written] == [
        "mobilevit_xxs_fp32.onnx",
        "mobilevit_xxs_fp32.onnx.json",
        "mobilevit_xxs_fp32.onnx.labels.txt",
    ]
    assert written[0].parts[:2] == ("outputs", "export") and len(written[0].parts) == 4
    assert not list(tmp_path.rglob(".hydra"))
    # The last line says how to try the file; its evaluate.py command runs as printed (the folder filled in).
    hint = done.stdout.strip().splitlines()[-1]
    assert hint == (
        f"try it on your photos: python evaluate.py {written[0]} LABELLED_FOLDER, python predict.py {written[0]} PHOTO"
    )
    command = hint.split(": ", 1)[1].split(",")[0].replace("LABELLED_FOLDER", str(assets["folder"])).split()
    evaluated = subprocess.run(
        [sys.executable, str(REPO / command[1]), *command[2:], "--device", "cpu", "--workers", "0", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert evaluated.returncode == 0 and "model     mobilevit_xxs (onnx fp32) from " in evaluated.stdout, evaluated


def test_config_keys_cover_the_issue() -> None:
    sys.path.insert(0, str(REPO))
    import export

    keys = export.config_keys()
    for key in ("format", "checkpoint", "model", "pretrained", "num_classes", "output", "precision", "opset",
                "img_size", "dynamic_batch", "data.root", "calib_images"):  # fmt: skip
        assert key in keys


@pytest.mark.parametrize("model", sorted(path.stem for path in (REPO / "conf" / "model").glob("*.yaml")))
def test_export_config_composes_with_every_model(model: str) -> None:
    """conf/export.yaml with each model=<file>: as export.py hands it on, accepted by the torch-free checks."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("export", overrides=[f"model={model}"])
    config = OmegaConf.to_container(cfg, resolve=True)
    assert config["model"]["name"] == f"mobilevit_{model}" and config["model"]["name"] in list_models()
    spec = check_arguments(
        format=config["format"], precision=config["precision"], opset=config["opset"], img_size=config["img_size"],
        dynamic_batch=config["dynamic_batch"], calib_images=config["calib_images"],
        check_images=config["check_images"], seed=config["seed"], model=config["model"]["name"],
        num_classes=config["num_classes"],
    )  # fmt: skip
    assert spec.name == "onnx"


def test_empty_data_folder(assets: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(ExportError, match=r"data.root: no images found"):
        export_model(format="onnx", checkpoint=assets["mobilevit_xxs"], data_root=tmp_path / "empty")


def test_int8_is_refused_when_no_image_can_be_held_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One photo per class: the int8 ranges would come from the very images the parity check uses.
    Refused in one line, without first saying the check will go ahead on the calibration images."""
    assert pick_images(make_folder(tmp_path / "two", per_class=2), calib_images=4, check_images=4).held_out
    folder = make_folder(tmp_path / "one", per_class=1)
    assert not pick_images(folder, calib_images=4, check_images=4).held_out
    monkeypatch.setattr(exporter_module, "require_modules", lambda *args, **kwargs: None)
    with pytest.raises(ExportError, match="holds one image per class, too few for precision=int8"):
        export_model(format="tflite", model="xxs", num_classes=len(CLASSES), precision="int8",
                     data_root=folder, output=tmp_path / "m.tflite", img_size=64)  # fmt: skip
    assert not (tmp_path / "m.tflite").exists()
    assert "too small to hold images out" not in caplog.text


def test_a_folder_of_one_image_per_class_checks_on_the_calibration_images(
    assets: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """fp32 needs no calibration: one photo per class is used for the parity check, with a warning that none
    could be held out."""
    folder = make_folder(tmp_path / "one", per_class=1)
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch"):
        result = export_model(format="onnx", checkpoint=assets["mobilevit_xxs"], data_root=folder, img_size=64,
                              output=tmp_path / "m.onnx")  # fmt: skip
    assert result.parity.real_images and result.parity.images == 3
    assert f"{folder} is too small to hold images out: checking on the calibration images" in caplog.text


def test_the_delegate_notice_is_dropped_and_nothing_else(capfd: pytest.CaptureFixture[str]) -> None:
    """LiteRT's C++ "INFO: Created ... XNNPACK delegate" line is held back; a warning or error beside it is not."""
    from mobilevit_torch.export.runtime import DELEGATE_NOTICE, _without_delegate_notice

    print("before", file=sys.stderr)
    with _without_delegate_notice():
        os.write(2, b"a warning\n" + DELEGATE_NOTICE + b"\nERROR: something the user must see\n")
    print("after", file=sys.stderr)
    assert capfd.readouterr().err == "before\na warning\nERROR: something the user must see\nafter\n"


@pytest.mark.parametrize(
    ("precision", "level", "message"),
    [
        ("int8", logging.WARNING, "calibrating on 15 images, not calib_images=100: all {folder} has for calibration"),
        ("fp16", logging.INFO, "choosing the float16 weights on 15 images from {folder}"),
    ],
)
def test_what_an_export_says_of_the_training_images_it_uses(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    precision: str, level: int, message: str,
) -> None:  # fmt: skip
    """int8 calibrates on the training images (fewer than asked: a warning naming the setting); fp16 chooses its
    float16 weights on them, which is not calibrating. The conversion itself is stopped: only the words count."""
    folder = assets["folder"]  # 18 photos: 15 for training, 3 held out
    assert len(pick_images(folder, calib_images=100, check_images=3).calibration) == 15

    def stop(job: object) -> dict:
        raise ConversionError("stopped before converting")

    monkeypatch.setattr(exporter_module, "require_modules", lambda *args, **kwargs: None)
    stopped = dataclasses.replace(formats_module.FORMATS["tflite"], write=stop)
    monkeypatch.setitem(exporter_module.FORMATS, "tflite", stopped)
    with caplog.at_level(logging.INFO, logger="mobilevit_torch"), pytest.raises(ConversionError, match="stopped"):
        export_model(format="tflite", checkpoint=assets["mobilevit_xxs"], precision=precision, data_root=folder,
                     img_size=64, output=tmp_path / "m.tflite")  # fmt: skip
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "images" in r.getMessage()]
    assert any(lvl == level and text.startswith(message.format(folder=folder)) for lvl, text in said), said
    assert not any("calibrating" in text for _, text in said) or precision == "int8", said
