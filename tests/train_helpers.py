"""Tiny generated photo folders and configs for the training tests."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mobilevit_torch.training.config import TrainConfig, config_from_dict
from mobilevit_torch.training.loop import train

CLASSES = ("cat", "dog", "fox")


def make_folder(root: Path, per_class: int = 8, size: int = 48, odd_files: bool = True) -> Path:
    """Coloured-noise images whose mean colour depends on the class, so a model can learn them."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.zeros(3)
        base[index] = 160
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(40, 30, (size, size + 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    if odd_files:
        rgb = Image.fromarray(np.full((size, size, 3), (200, 30, 30), np.uint8))
        rgb.convert("L").save(root / "cat" / "gray.png")
        rgb.convert("RGBA").save(root / "cat" / "alpha.png")
        rgb.convert("CMYK").save(root / "dog" / "cmyk.jpg")
        rgb.convert("P").save(root / "dog" / "palette.png")
        Image.fromarray(np.full((size, size), 40000, np.uint16)).save(root / "fox" / "deep.png")
        (root / "fox" / "notes.jpg").write_text("this is not an image")
        (root / "cat" / "empty.jpg").write_bytes(b"")
    return root


def tiny_config(tmp_path: Path, root: Path, **overrides: Any) -> TrainConfig:
    """A seconds-long CPU run: 64 px, batch 8, no compile/plots unless asked."""
    base: dict[str, Any] = {
        "epochs": 2,
        "device": "cpu",
        "progress": False,
        "tensorboard": True,
        "log_every": 1,
        "channels_last": False,
        "model": {"name": "mobilevit_xxs"},
        "data": {
            "kind": "imagefolder",
            "root": str(root),
            "img_size": 64,
            "batch_size": 8,
            "eval_batch_size": 16,
            "num_workers": 1,
            "val_fraction": 0.25,
            "cache_dir": str(tmp_path / "cache"),
        },
        "recipe": {"warmup_epochs": 1, "lr": 0.002},
    }
    for key, value in overrides.items():
        node = base
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return config_from_dict(base).validate()


def as_overrides(config: TrainConfig) -> list[str]:
    """The same config as Hydra command-line overrides (for subprocess runs of train.py)."""
    flat: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                walk(f"{prefix}{field.name}.", getattr(value, field.name))
            return
        key = prefix.rstrip(".")
        if value is None:
            flat.append(f"{key}=null")
        elif isinstance(value, bool):
            flat.append(f"{key}={str(value).lower()}")
        elif isinstance(value, list):
            flat.append(f"{key}=[{','.join(map(str, value))}]")
        elif isinstance(value, str):
            flat.append(f"{key}='{value}'" if value else f"{key}=''")
        else:
            flat.append(f"{key}={value}")

    walk("", config)
    return flat


def check_switch_is_off(tmp_path: Path, key: str, message: str, **overrides: Any) -> None:
    """A one-epoch CPU run with ``key`` false and true: the true run logs ``message`` (why the switch is
    off there) and both train alike."""
    folder = make_folder(tmp_path / "photos", per_class=4, odd_files=False)
    losses = {}
    for switch in (False, True):
        run = tmp_path / f"run_{switch}"
        train(tiny_config(tmp_path, folder, epochs=1, **{key: switch}, **overrides), run)
        assert (message in (run / "train.log").read_text()) is switch
        losses[switch] = [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[True] == losses[False]
