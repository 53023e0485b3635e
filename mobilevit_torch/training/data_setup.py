"""The training data: photos -> split -> batches, decoded once into a device cache or loaded per image.

Two steps, because the model sits between them: :func:`prepare_split` finds the photos and their
classes (which size the model's head); :func:`build_data` then builds the batches in the model's
preprocessing and hands the loop a :class:`TrainData`. Every refusal (too few classes, images or
validation photos; a batch that cannot be formed) comes before any image is decoded or loaded.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor

from mobilevit_torch.data.cache import decode_images
from mobilevit_torch.data.datasets import find_unreadable
from mobilevit_torch.data.download import FLOWERS_SHA256, FLOWERS_URL, prepare_flowers
from mobilevit_torch.data.folder import DataError, DatasetSplit, check_classes, make_split
from mobilevit_torch.preprocessing import Preprocessing
from mobilevit_torch.training import pipeline
from mobilevit_torch.training.config import ConfigError, TrainConfig
from mobilevit_torch.training.distributed import DistInfo, barrier

logger = logging.getLogger("mobilevit_torch.train")


@dataclasses.dataclass(frozen=True)
class TrainData:
    """What the loop takes from the data."""

    train_batches: pipeline.CachedTrainBatches | pipeline.LoaderTrainBatches
    val_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]]  # a fresh pass over this rank's share per call
    num_train: int  # readable images, all ranks together
    num_val: int
    skipped: list[tuple[str, str]]  # (path, reason) of every unreadable file left out


def _flowers(root: Path, config: TrainConfig) -> Path:
    try:
        return prepare_flowers(root, url=config.data.url or FLOWERS_URL, sha256=config.data.sha256 or FLOWERS_SHA256)
    except DataError as error:
        raise DataError(
            f"{error}. data.root=PATH sets where tf_flowers is looked for and put; "
            f"data=imagefolder data.root=PATH trains on your own photos (one sub-folder per class)"
        ) from None


def prepare_split(
    config: TrainConfig, run_dir: Path, info: DistInfo, *, reuse: bool = False
) -> tuple[DatasetSplit, list[tuple[str, str]]]:
    """Find (or download) the photos, split them (or, ``reuse``: take the run's split.json), drop unreadable
    files, and check the classes; returns the split and the ``(path, reason)`` of the files dropped."""
    split_file = run_dir / "split.json"
    if reuse and split_file.exists():
        split = DatasetSplit.from_json(split_file)
    else:
        root = Path(config.data.root).expanduser()
        if config.data.kind == "flowers":
            if info.is_main:
                root = _flowers(root, config)
            barrier(info)
            root = _flowers(root, config)  # found where the main process put them
        elif not root.is_dir():
            raise DataError(f"data.root does not exist or is not a folder: {root}")
        split = make_split(root, seed=config.seed, val_fraction=config.data.val_fraction)
        if info.is_main:
            split.to_json(split_file)
    skipped: list[tuple[str, str]] = []
    if not config.data.cache:  # the cache path finds unreadable files while decoding
        train, bad_train = find_unreadable(split.train, num_workers=max(1, config.data.num_workers))
        val, bad_val = find_unreadable(split.val, num_workers=max(1, config.data.num_workers))
        split = dataclasses.replace(split, train=train, val=val)
        skipped = bad_train + bad_val
    classes = len(split.class_names)
    logger.info(
        "data: %d training and %d validation images in %d class%s (%s)",
        len(split.train),
        len(split.val),
        classes,
        "" if classes == 1 else "es",
        split.source,
    )
    check_classes(  # before any decoding (with the cache, the readable images are checked again once known)
        [s.label for s in split.train],
        [s.label for s in split.val],
        split.class_names,
        root=config.data.root,
        source=split.source,
        warn=not config.data.cache,
    )
    return split, skipped


def build_data(
    config: TrainConfig,
    split: DatasetSplit,
    skipped: list[tuple[str, str]],
    pre: Preprocessing,
    device: torch.device,
    info: DistInfo,
) -> TrainData:
    """This rank's training and validation batches of ``split`` in ``pre``'s preprocessing: decoded once
    into a device cache (``data.cache``) or per image by DataLoader workers. ``skipped``: the files
    :func:`prepare_split` dropped; the cache adds those it could not decode."""
    shard = pipeline.Shard(info.rank, info.world_size)
    sizes = (
        pipeline.multiscale_sizes(config.data.img_size, config.data.multiscale_sizes)
        if config.data.multiscale
        else None
    )
    if config.data.cache:
        cache_dir = Path(config.data.cache_dir).expanduser()
        workers = max(1, config.data.num_workers)
        train_cache = decode_images(
            split.train,
            size=pipeline.train_cache_size(config.recipe, pre),
            mode="squash",
            cache_dir=cache_dir,
            num_workers=workers,
            progress=info.is_main and config.progress,
        )
        val_cache = decode_images(
            split.val,
            size=pre.resize_size,
            mode="center_crop",
            cache_dir=cache_dir,
            num_workers=workers,
            progress=info.is_main and config.progress,
        )
        skipped = skipped + train_cache.skipped + val_cache.skipped
        check_classes(
            train_cache.labels.tolist(),
            val_cache.labels.tolist(),
            split.class_names,
            root=config.data.root,
            source=split.source,
        )
        check_batch_size(len(train_cache.labels), config.data.batch_size, info.world_size)
        if sizes:
            check_multiscale_batch(len(train_cache.labels), config, sizes, info.world_size)
        train_batches: pipeline.CachedTrainBatches | pipeline.LoaderTrainBatches = pipeline.CachedTrainBatches(
            train_cache.images.to(device),
            train_cache.labels.to(device),
            batch_size=config.data.batch_size,
            img_size=config.data.img_size,
            pre=pre,
            recipe=config.recipe,
            seed=config.seed,
            shard=shard,
            sizes=sizes,
        )
        val_images, val_labels = val_cache.images.to(device), val_cache.labels.to(device)

        def val_batches() -> Iterable[tuple[Tensor, Tensor]]:
            return pipeline.CachedEvalBatches(
                val_images,
                val_labels,
                batch_size=config.data.eval_batch_size,
                img_size=config.data.img_size,
                pre=pre,
                shard=shard,
            )

        num_train, num_val = len(train_cache.labels), len(val_cache.labels)
    else:
        check_batch_size(len(split.train), config.data.batch_size, info.world_size)
        if sizes:
            check_multiscale_batch(len(split.train), config, sizes, info.world_size)
        train_batches = pipeline.LoaderTrainBatches(
            split.train,
            batch_size=config.data.batch_size,
            img_size=config.data.img_size,
            pre=pre,
            recipe=config.recipe,
            seed=config.seed,
            num_workers=config.data.num_workers,
            device=device,
            shard=shard,
            sizes=sizes,
        )

        def val_batches() -> Iterable[tuple[Tensor, Tensor]]:
            return pipeline.loader_eval_batches(
                split.val,
                batch_size=config.data.eval_batch_size,
                pre=pre,
                num_workers=config.data.num_workers,
                device=device,
                shard=shard,
            )

        num_train, num_val = len(split.train), len(split.val)
    if skipped:
        logger.warning("skipped %d unreadable file(s); see the warnings above and summary.json", len(skipped))
    return TrainData(train_batches, val_batches, num_train=num_train, num_val=num_val, skipped=skipped)


def check_batch_size(num_train: int, batch_size: int, world_size: int) -> None:
    """Refuse, in the config's terms, a training batch that cannot be formed (before any data pipeline is built)."""
    if batch_size % world_size:
        raise ConfigError(f"data.batch_size={batch_size} is not divisible by the {world_size} training processes")
    if num_train < batch_size:
        raise ConfigError(
            f"only {num_train} readable training images, fewer than data.batch_size={batch_size}: "
            "lower data.batch_size (or add photos)"
        )


def check_multiscale_batch(num_train: int, config: TrainConfig, sizes: list[int], world_size: int) -> None:
    """Refuse multi-scale sizes whose batch, scaled up by area, is larger than the training set (an epoch
    could never hold such a batch)."""
    batch, base, size = config.data.batch_size, config.data.img_size, min(sizes)  # smallest images: largest batch
    scaled = pipeline.scaled_batch(batch, base, size, world_size)
    if scaled > num_train:
        raise ConfigError(
            f"data.multiscale: at {size} px the batch is scaled to {scaled} images (data.batch_size={batch} x "
            f"({base}/{size})^2), more than the {num_train} readable training images: lower data.batch_size or "
            "leave the small sizes out of data.multiscale_sizes"
        )
