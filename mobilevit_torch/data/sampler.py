"""The multi-scale sampler of MobileViT (Mehta & Rastegari 2021, Section 4 and Figure 5).

Each batch is drawn at one resolution picked at random from a set (160…320 px for a 256 px model),
and its batch size is scaled by ``(base_size / size)**2`` so every step costs about the same:
more small images, fewer large ones. The paper reports that this both speeds up training and
improves accuracy, and that the network learns multi-scale representations without fine-tuning.

Under DDP every rank must run the same number of steps at the same resolutions, or the gradient
all-reduce deadlocks; so the resolution sequence depends only on (seed, epoch) while the indices
are sharded by rank.

Each sample also gets the seed of its augmentation's random draws, from (seed, epoch, rank, its
place in the epoch): the dataset draws from it alone, so an epoch's images are the same whichever
DataLoader worker, and however many, make them, and a resumed epoch repeats them exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What a batch sampler hands the dataset for one sample."""

    index: int  # into the dataset's samples
    img_size: int  # the resolution of its batch
    seed: int  # of its augmentation's random draws


def default_sizes(base_size: int) -> list[int]:
    """Multiples of 32 from about 0.625× to 1.25× ``base_size`` (160…320 for 256), plus the base."""
    low = max(32, math.ceil(0.625 * base_size / 32) * 32)
    high = max(low, math.floor(1.25 * base_size / 32) * 32)
    return sorted({*range(low, high + 1, 32), base_size})


def scaled_batch_size(batch_size: int, base_size: int, size: int) -> int:
    """``max(1, floor(batch_size * (base_size / size)**2))`` in exact integer arithmetic: the batch at
    ``size`` px that costs about the pixels of ``batch_size`` images at ``base_size`` (one rank's share)."""
    return max(1, batch_size * base_size**2 // size**2)


class MultiScaleBatchSampler(Sampler[list[SampleKey]]):
    """Batches of :class:`SampleKey` with a per-batch resolution and a batch size scaled to match.

    Call :meth:`set_epoch` before each epoch, like ``DistributedSampler``: the shuffle, the
    resolutions and the augmentation seeds depend on ``(seed, epoch)``; ``skip`` batches of the
    epoch are left out (a resumed epoch starts after those it had trained). With ``drop_last`` (the
    default) each rank gets an equal, disjoint share of the dataset and the few samples left over
    once no full batch fits are dropped (fewer than one batch at the largest size); without it
    shards are padded by wrapping around (a few samples seen twice) and the last batch is kept short.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        base_size: int,
        base_batch_size: int,
        sizes: Sequence[int] | None = None,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if num_samples < 1 or base_size < 1 or base_batch_size < 1:
            raise ValueError(
                f"num_samples, base_size and base_batch_size must be positive, got {num_samples}, "
                f"{base_size}, {base_batch_size}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        sizes = default_sizes(base_size) if sizes is None else sorted({int(s) for s in sizes})
        if not sizes or min(sizes) < 1:
            raise ValueError(f"sizes must be positive image sizes, got {sizes}")
        self.num_samples = num_samples
        self.base_size = base_size
        self.base_batch_size = base_batch_size
        self.sizes = sizes
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.skip = 0
        self._shard_len = num_samples // world_size if drop_last else math.ceil(num_samples / world_size)
        smallest = self.batch_size_for(max(sizes))
        if drop_last and self._shard_len < smallest:
            raise ValueError(
                f"each of {world_size} rank(s) gets {self._shard_len} samples, fewer than the smallest batch "
                f"({smallest} at {max(sizes)} px): lower base_batch_size or pass drop_last=False"
            )

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def batch_size_for(self, size: int) -> int:
        """This rank's batch at ``size`` px: :func:`scaled_batch_size` of ``base_batch_size``."""
        return scaled_batch_size(self.base_batch_size, self.base_size, size)

    def batch_plan(self, epoch: int | None = None) -> list[tuple[int, int]]:
        """``(img_size, batch_size)`` of every batch of an epoch — the same on every rank."""
        epoch = self.epoch if epoch is None else epoch
        rng = random.Random(f"multiscale-sizes:{self.seed}:{epoch}")
        plan, filled = [], 0
        while filled < self._shard_len:
            remaining = self._shard_len - filled
            # Near the end of the shard only sizes whose batch still fits are drawn, so at most
            # one small-batch's worth of samples is dropped.
            fitting = [size for size in self.sizes if self.batch_size_for(size) <= remaining]
            if fitting:
                size = rng.choice(fitting)
                batch_size = self.batch_size_for(size)
            elif self.drop_last:
                break
            else:
                size, batch_size = rng.choice(self.sizes), remaining
            plan.append((size, batch_size))
            filled += batch_size
        return plan

    def shard(self, epoch: int | None = None) -> list[int]:
        """This rank's shuffled indices for an epoch; ranks take interleaved, disjoint slices."""
        epoch = self.epoch if epoch is None else epoch
        order = list(range(self.num_samples))
        random.Random(f"multiscale-order:{self.seed}:{epoch}").shuffle(order)
        total = self._shard_len * self.world_size
        if total > len(order):  # drop_last=False: pad by wrapping around
            order += (order * math.ceil(total / len(order)))[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        indices = self.shard()
        start = 0
        for number, (size, batch_size) in enumerate(self.batch_plan()):
            if number >= self.skip:
                yield [
                    SampleKey(index, size, self.draw_seed(place))
                    for place, index in enumerate(indices[start : start + batch_size], start)
                ]
            start += batch_size

    def draw_seed(self, place: int) -> int:
        """The augmentation seed of this rank's ``place``-th sample of the epoch (unique across ranks)."""
        return ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + place * self.world_size + self.rank) % 2**63

    def __len__(self) -> int:
        """Batches in the whole epoch (``skip`` left out of iteration only)."""
        return len(self.batch_plan())
