"""TrainConfig.validate: every setting with a natural range fails at once, in one line naming key and range."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mobilevit_torch.training.config import ConfigError
from tests.train_helpers import tiny_config


@pytest.mark.parametrize(
    ("override", "value", "message"),
    [
        ("log_every", 0, "log_every must be positive, got 0"),
        ("model.drop_rate", 1.5, r"model.drop_rate must be in \[0, 1\), got 1.5"),
        ("model.dropout", -0.1, r"model.dropout must be in \[0, 1\), got -0.1"),
        ("model.dropout", 1.0, r"model.dropout must be in \[0, 1\), got 1.0"),
        ("model.drop_path_rate", 1.0, r"model.drop_path_rate must be in \[0, 1\), got 1.0"),
        ("model.drop_path_rate", -0.1, r"model.drop_path_rate must be in \[0, 1\), got -0.1"),
        ("model.drop_path_rate", "0.1", "model.drop_path_rate must be a number, got '0.1'"),
        ("recipe.mixup", -1, "recipe.mixup must be >= 0, got -1"),
        ("recipe.cutmix", -0.5, "recipe.cutmix must be >= 0, got -0.5"),
        ("recipe.label_smoothing", 2, r"recipe.label_smoothing must be in \[0, 1\), got 2"),
        ("recipe.warmup_epochs", -1, "recipe.warmup_epochs must be >= 0, got -1"),
        ("recipe.hflip", 2, r"recipe.hflip \(a probability\) must be in \[0, 1\], got 2"),
        ("recipe.clip_grad", -1, "recipe.clip_grad must be >= 0, got -1"),
        ("recipe.weight_decay", -1, "recipe.weight_decay must be >= 0, got -1"),
        ("data.img_size", 48, "data.img_size must be a multiple of 32"),
        ("data.sha256", "a" * 65, "data.sha256 must be empty or 64 hexadecimal digits"),
        ("recipe.ema_decay", 1.5, r"recipe.ema_decay must be in \[0, 1\), got 1.5"),
        ("recipe.min_lr", -1, "recipe.min_lr must be >= 0, got -1"),
        ("recipe.min_lr", 0.1, r"recipe.min_lr must be in \[0, recipe.lr=0.002\]"),
        ("recipe.resize", -5, "recipe.resize must be >= 0, got -5"),
        ("recipe.resize", 50, "recipe.resize must be 0 .* or at least data.img_size=64 .*got 50"),
        ("recipe.rrc_scale", [0.5, 1.5], r"recipe.rrc_scale .* 0 < low <= high <= 1, got \[0.5, 1.5\]"),
        ("recipe.lr", float("nan"), "recipe.lr must be a finite number"),
        ("stop_after", -1, "stop_after must be >= 0, got -1"),
        ("max_steps_per_epoch", -1, "max_steps_per_epoch must be >= 0, got -1"),
        ("seed", -1, "seed must be >= 0, got -1"),
        ("data.multiscale_sizes", [50, 70], r"data.multiscale_sizes must be .* multiples of 32 .*got \[50, 70\]"),
        ("data.multiscale_sizes", [], r"data.multiscale_sizes must be null"),
        ("data.sha256", "abc", "data.sha256 must be empty or 64 hexadecimal digits"),
        ("data.root", "", "data=imagefolder needs data.root=PATH"),
        ("recipe.randaugment", True, r"recipe.randaugment=true runs per image .*: add data.cache=false"),
    ],
)
def test_out_of_range_setting_is_named_with_its_range(tmp_path: Path, override: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        tiny_config(tmp_path, tmp_path, **{override: value})
    assert "\n" not in str(error.value)


def test_edges_of_the_ranges_are_accepted(tmp_path: Path) -> None:
    edges = {
        "model.drop_rate": 0.0,
        "model.dropout": 0.0,
        "model.drop_path_rate": 0.0,
        "recipe.hflip": 1.0,
        "recipe.mixup": 0.0,
        "recipe.clip_grad": 0.0,
        "recipe.warmup_epochs": 0,
        "recipe.min_lr": 0.002,
        "recipe.resize": 64,
        "recipe.rrc_scale": [1.0, 1.0],
        "data.multiscale_sizes": [32, 96],
        "data.sha256": "0" * 64,
        "stop_after": 0,
        "max_steps_per_epoch": 0,
    }
    tiny_config(tmp_path, tmp_path, **edges)
    # min_lr above lr only matters for the cosine schedule
    tiny_config(tmp_path, tmp_path, **{"recipe.schedule": "constant", "recipe.min_lr": 0.1})


def test_data_root_that_is_a_file_says_so(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"")
    with pytest.raises(ConfigError, match="photo.jpg is a file, not a folder"):
        tiny_config(tmp_path, photo).check_paths()
    with pytest.raises(ConfigError, match="photo.jpg is a file, not a folder"):
        tiny_config(tmp_path, photo, **{"data.kind": "flowers"}).check_paths()


def test_local_looking_pretrained_path_is_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pretrained: no such file or folder: runs/best.pt"):
        tiny_config(tmp_path, tmp_path, pretrained="runs/best.pt").check_paths()
    tiny_config(tmp_path, tmp_path, pretrained="apple/mobilevit-xx-small").check_paths()  # a hub id: fetched later


def test_flowers_offline_names_train_py_options(tmp_path: Path) -> None:
    """The library says how to get tf_flowers by hand; training adds the options that avoid the download."""
    from mobilevit_torch.data import DataError
    from mobilevit_torch.training.data_setup import prepare_split
    from mobilevit_torch.training.distributed import DistInfo

    offline = "http://127.0.0.1:9/x.tgz"  # the discard port: nothing listens
    config = tiny_config(tmp_path, tmp_path / "data", **{"data.kind": "flowers", "data.url": offline})
    (tmp_path / "run").mkdir()
    with pytest.raises(DataError) as info:
        prepare_split(config, tmp_path / "run", DistInfo())
    message = str(info.value)
    assert message.startswith(f"could not download {offline} (") and "yourself and extract it into" in message
    assert message.endswith("data=imagefolder data.root=PATH trains on your own photos (one sub-folder per class)")
