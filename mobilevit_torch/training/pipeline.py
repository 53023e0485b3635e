"""Where training and validation batches come from.

Two paths, one interface: ``steps_per_epoch``, ``epoch(epoch, start_step)`` yielding a
:class:`Batch` of device tensors, and ``materialize(batch) -> (x, y)``, the device-only work that
turns those tensors into model input and labels. The training step runs ``materialize`` itself, so
on a GPU the batch assembly is part of the step's CUDA graph.

- cached (default): every image is decoded once into a uint8 tensor that lives on the training
  device; a batch is its indices, crop boxes and flips (the whole epoch's plan is copied to the
  device in one transfer), and ``materialize`` gathers and crops/flips them there (``augment.py``).
  No per-image Python work per step, so the loader never starves the GPU.
- per-image DataLoader: torchvision transforms in worker processes, for folders too large to cache
  or for per-image augmentations (RandAugment); a batch is the finished ``x`` and ``y``.

Batch composition is a pure function of ``(seed, epoch)``: the same global batch on any number
of processes (each rank takes its slice), and a resumed run replays the exact same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from mobilevit_torch.data.datasets import ImageListDataset
from mobilevit_torch.data.folder import Sample
from mobilevit_torch.data.sampler import MultiScaleBatchSampler, default_sizes, scaled_batch_size
from mobilevit_torch.data.transforms import eval_transform, interpolation_mode, to_model_input
from mobilevit_torch.preprocessing import Preprocessing
from mobilevit_torch.training.augment import (
    center_crop,
    crop_and_flip,
    random_crop_boxes,
    random_resized_crop_boxes,
)
from mobilevit_torch.training.config import RecipeConfig


class Batch(NamedTuple):
    """One micro-batch as the training step receives it: output image size and device tensors."""

    size: int
    tensors: dict[str, Tensor]


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def multiscale_sizes(base: int, sizes: list[int] | None) -> list[int]:
    """``sizes``, or the paper's resolutions around ``base`` (the sampler's :func:`default_sizes`)."""
    return sizes or default_sizes(base)


def scaled_batch(batch_size: int, base: int, size: int, world_size: int) -> int:
    """The whole batch (all ranks) at ``size`` px: each rank's share scaled by area as the
    :class:`MultiScaleBatchSampler` of the DataLoader path scales it, so both paths take the same steps."""
    return world_size * scaled_batch_size(batch_size // world_size, base, size)


class CachedTrainBatches:
    """Training batches gathered from on-device uint8 images and augmented on the device."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        img_size: int,
        pre: Preprocessing,
        recipe: RecipeConfig,
        seed: int,
        shard: Shard = Shard(),
        sizes: list[int] | None = None,
    ) -> None:
        if batch_size % shard.world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {shard.world_size} processes")
        if len(labels) < batch_size:
            raise ValueError(f"only {len(labels)} training images for a batch of {batch_size}: lower data.batch_size")
        self.images, self.labels = images, labels
        self.batch_size, self.img_size, self.pre, self.recipe = batch_size, img_size, pre, recipe
        self.seed, self.shard, self.sizes = seed, shard, sizes

    def _plan(self, epoch: int) -> list[tuple[Tensor, int, Tensor, Tensor]]:
        """Every step of one epoch: (global indices, output size, crop boxes, flips)."""
        generator = epoch_generator(self.seed, epoch)
        order = torch.randperm(len(self.labels), generator=generator)
        plan, position = [], 0
        while True:
            # Near the end of the epoch only sizes whose batch still fits are drawn (as the sampler of the
            # DataLoader path does): less than the smallest batch is dropped, like drop_last=True.
            remaining = len(order) - position
            fitting = [
                size
                for size in self.sizes or [self.img_size]
                if scaled_batch(self.batch_size, self.img_size, size, self.shard.world_size) <= remaining
            ]
            if not fitting:
                return plan
            size = self.img_size
            if self.sizes:
                size = fitting[int(torch.randint(len(fitting), (1,), generator=generator))]
            batch = scaled_batch(self.batch_size, self.img_size, size, self.shard.world_size)
            indices = order[position : position + batch]
            position += batch
            if self.recipe.augment == "keras":
                # The cache holds the images resized as the recipe says (train_cache_size): the crop is
                # img_size of them at every scale; multi-scale only changes the size it is resampled to.
                boxes = random_crop_boxes(
                    batch,
                    source_size=self.images.shape[-1],
                    crop_size=min(self.img_size, self.images.shape[-1]),
                    generator=generator,
                )
            else:
                boxes = random_resized_crop_boxes(
                    batch, scale=tuple(self.recipe.rrc_scale), ratio=tuple(self.recipe.rrc_ratio), generator=generator
                )
            flips = torch.rand(batch, generator=generator) < self.recipe.hflip
            plan.append((indices, size, boxes, flips))

    @property
    def steps_per_epoch(self) -> int:
        return len(self._plan(0)) if self.sizes else len(self.labels) // self.batch_size

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        rank, world = self.shard.rank, self.shard.world_size
        plan = self._plan(epoch)[start_step:]
        if not plan:
            return
        # This rank's slice of each global batch (the same slice of the same random draws), the
        # whole epoch in one host-to-device copy per field, then split back into steps (views).
        fields = {
            "indices": torch.cat([indices[rank::world] for indices, _, _, _ in plan]),  # [sum B]
            "boxes": torch.cat([boxes[rank::world] for _, _, boxes, _ in plan]),  # [sum B, 4]
            "flips": torch.cat([flips[rank::world] for _, _, _, flips in plan]),  # [sum B]
        }
        device = self.images.device
        if device.type == "cuda":
            fields = {name: value.pin_memory().to(device, non_blocking=True) for name, value in fields.items()}
        counts = [len(indices[rank::world]) for indices, _, _, _ in plan]
        steps = {name: value.split(counts) for name, value in fields.items()}
        for i, (_, size, _, _) in enumerate(plan):
            yield Batch(size, {name: value[i] for name, value in steps.items()})

    def materialize(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Gather, crop and flip on the device: ``x`` float ``[B, 3, size, size]``, ``y`` ``[B]``."""
        indices, boxes, flips = batch.tensors["indices"], batch.tensors["boxes"], batch.tensors["flips"]
        x = crop_and_flip(self.images[indices], boxes, flips, out_size=batch.size, pre=self.pre)
        return x, self.labels[indices]


def eval_batch_size(count: int, max_batch: int) -> int:
    """Images per validation batch: as few batches as ``max_batch`` allows, all of one size.

    331 photos at ``max_batch`` 250 are two batches of 166 (the second padded by one image) rather
    than 250 and 81: one input shape, so on a GPU one CUDA graph per model and one cuDNN algorithm
    search per convolution instead of two, for the cost of computing at most one padding image per
    batch (fewer than the number of batches in all)."""
    num_batches = -(-count // max_batch)
    return -(-count // num_batches) if num_batches else max_batch


def pad_batch(x: Tensor, size: int) -> Tensor:
    """``x`` followed by copies of its last image up to ``size`` images (``evaluate`` drops their logits)."""
    missing = size - len(x)
    # [1, C, H, W] -> [missing, C, H, W] (a broadcast view; cat copies it once)
    return torch.cat((x, x[-1:].expand(missing, *x.shape[1:]))) if missing > 0 else x


class CachedEvalBatches:
    """Validation batches: centre crops of on-device uint8 images, this rank's share only.

    Each batch yields ``(x, y)``; every ``x`` has the same number of images (:func:`eval_batch_size`),
    so the last one may end with padding images beyond its ``len(y)`` labels."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        img_size: int,
        pre: Preprocessing,
        shard: Shard = Shard(),
    ) -> None:
        self.images, self.labels = images[shard.rank :: shard.world_size], labels[shard.rank :: shard.world_size]
        self.batch_size = eval_batch_size(len(self.labels), batch_size)
        self.img_size, self.pre = img_size, pre

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            images = pad_batch(self.images[start : start + self.batch_size], self.batch_size)
            yield center_crop(images, self.img_size, self.pre), self.labels[start : start + self.batch_size]


def train_image_transform(recipe: RecipeConfig, pre: Preprocessing, size: int) -> T.Compose:
    """Per-image training transform for the DataLoader path."""
    interpolation = interpolation_mode(pre.interpolation)
    if recipe.augment == "keras":
        resize = train_cache_size(recipe, pre)
        steps: list = [
            T.Resize((resize * size // pre.input_size,) * 2, interpolation=interpolation),
            T.RandomCrop(size),
        ]
    else:
        steps = [
            T.RandomResizedCrop(
                size, scale=tuple(recipe.rrc_scale), ratio=tuple(recipe.rrc_ratio), interpolation=interpolation
            )
        ]
    steps.append(T.RandomHorizontalFlip(recipe.hflip))
    if recipe.randaugment:
        steps.append(T.RandAugment())
    return T.Compose([*steps, to_model_input(pre)])


class LoaderTrainBatches:
    """Training batches from a DataLoader decoding and augmenting each image in worker processes."""

    def __init__(
        self,
        samples: list[Sample],
        *,
        batch_size: int,
        img_size: int,
        pre: Preprocessing,
        recipe: RecipeConfig,
        seed: int,
        num_workers: int,
        device: torch.device,
        shard: Shard = Shard(),
        sizes: list[int] | None = None,
    ) -> None:
        per_rank = batch_size // shard.world_size
        self.device, self.seed = device, seed
        self.dataset = ImageListDataset(
            samples,
            transform=train_image_transform(recipe, pre, img_size),
            transform_for_size=lambda size: train_image_transform(recipe, pre, size),
        )
        self.sampler = MultiScaleBatchSampler(
            len(samples),
            base_size=img_size,
            base_batch_size=per_rank,
            sizes=sizes or [img_size],
            seed=seed,
            rank=shard.rank,
            world_size=shard.world_size,
            drop_last=True,
        )
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            # Its workers' base seed comes from here, not from torch's generator (the loop's dropout
            # stream, which a resumed run restores): when the workers start does not shift it.
            generator=torch.Generator().manual_seed(seed),
        )

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        # Each image's augmentation draws from its own seed (the sampler's): not from torch's
        # generator, which the loop seeds for dropout, nor from the workers' own.
        self.sampler.set_epoch(epoch, skip=start_step)
        for x, y in self.loader:
            yield Batch(
                x.shape[-1], {"x": x.to(self.device, non_blocking=True), "y": y.to(self.device, non_blocking=True)}
            )

    def materialize(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return batch.tensors["x"], batch.tensors["y"]


def loader_eval_batches(
    samples: list[Sample],
    *,
    batch_size: int,
    pre: Preprocessing,
    num_workers: int,
    device: torch.device,
    shard: Shard = Shard(),
) -> Iterator[tuple[Tensor, Tensor]]:
    """Validation batches decoded per image, all ``x`` of one size as in :class:`CachedEvalBatches`."""
    dataset = ImageListDataset(samples[shard.rank :: shard.world_size], transform=eval_transform(pre))
    batch_size = eval_batch_size(len(dataset), batch_size)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    for x, y in loader:
        yield pad_batch(x.to(device, non_blocking=True), batch_size), y.to(device, non_blocking=True)


def train_cache_size(recipe: RecipeConfig, pre: Preprocessing) -> int:
    """Side of the square, squashed training images kept in the cache (and, for the keras augment, the
    side they are resized to before the random crop of ``pre.input_size``)."""
    if recipe.resize:
        return recipe.resize
    if recipe.crop_pct:
        return round(pre.input_size / recipe.crop_pct)
    return pre.resize_size
