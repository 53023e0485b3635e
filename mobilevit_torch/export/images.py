"""Real images for an export: calibration (full-integer int8) and parity checks, never the same photos.

The folder is split the way training splits it (``make_split``: its own ``train/`` and ``val/``, or a
seeded stratified split), so with the training run's seed the checks use images the model did not
train on. Both sets are drawn class by class in turn, so a few dozen images cover every class.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mobilevit_torch.data.folder import Sample, make_split
from mobilevit_torch.data.images import BadImageError, load_rgb
from mobilevit_torch.data.transforms import eval_transform
from mobilevit_torch.preprocessing import Preprocessing

logger = logging.getLogger("mobilevit_torch")


@dataclass(frozen=True)
class ExportImages:
    """Where the images came from, and the two disjoint sets drawn from it."""

    root: Path
    class_names: list[str]
    calibration: list[Sample]  # from the training part of the split
    check: list[Sample]  # from the validation part, or the calibration images when none is held out
    held_out: bool = True  # False: the folder was too small to hold images out; check is calibration's


def pick_images(
    root: str | Path,
    *,
    calib_images: int,
    check_images: int,
    seed: int = 0,
    split_seed: int = 0,
    val_fraction: float = 0.1,
) -> ExportImages:
    """Split ``root`` (an image folder, one sub-folder per class) and draw up to the requested counts.

    ``split_seed`` and ``val_fraction`` are the training run's (``make_split``'s defaults otherwise);
    ``seed`` picks the images inside each part.
    """
    split = make_split(Path(root), seed=split_seed, val_fraction=val_fraction)
    train, val = split.train, split.val
    held_out = bool(val)
    if not held_out:  # every class has a single image: nothing to hold out (the caller says so)
        val = train
    if not train:
        train = val
    return ExportImages(
        root=Path(root),
        class_names=split.class_names,
        calibration=balanced(train, calib_images, seed=seed),
        check=balanced(val, check_images, seed=seed + 1),
        held_out=held_out,
    )


def training_split(config: dict[str, Any]) -> dict[str, Any]:
    """``pick_images`` arguments for a training run's split (its seed and validation fraction), from the
    checkpoint's stored config; empty when it has none (``make_split``'s defaults then apply)."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    args: dict[str, Any] = {}
    if isinstance(config.get("seed"), int):
        args["split_seed"] = config["seed"]
    if isinstance(data.get("val_fraction"), float):
        args["val_fraction"] = data["val_fraction"]
    return args


def balanced(samples: list[Sample], count: int, *, seed: int) -> list[Sample]:
    """Up to ``count`` samples taken from each class in turn, each class in a seeded random order."""
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    rng = random.Random(seed)
    queues = []
    for label in sorted(by_label):
        members = sorted(by_label[label], key=lambda s: s.path)
        rng.shuffle(members)
        queues.append(members)
    picked: list[Sample] = []
    depth = 0
    while len(picked) < count and any(depth < len(q) for q in queues):
        picked.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return picked[:count]


def load_images(samples: list[Sample], preprocessing: Preprocessing) -> tuple[Tensor, list[int]]:
    """``[N, 3, S, S]`` model inputs and their labels; unreadable files are skipped with a warning."""
    transform = eval_transform(preprocessing)
    images, labels = [], []
    for sample in samples:
        try:
            images.append(transform(load_rgb(sample.path)))
        except BadImageError as error:
            logger.warning("skipping %s", error)
            continue
        labels.append(sample.label)
    size = preprocessing.input_size
    batch = torch.stack(images) if images else torch.empty(0, 3, size, size)
    return batch, labels


def random_inputs(count: int, preprocessing: Preprocessing, *, seed: int = 0) -> Tensor:
    """Uniform random pixels in [0, 1], normalised like real ones: for parity checks when no folder is given."""
    generator = torch.Generator().manual_seed(seed)
    size = preprocessing.input_size
    pixels = torch.rand(count, 3, size, size, generator=generator)
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)  # [3] -> [1, 3, 1, 1], broadcast over pixels
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)  # [3] -> [1, 3, 1, 1]
    return (pixels - mean) / std
