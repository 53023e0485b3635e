"""The multi-scale sampler of MobileViT (Mehta & Rastegari 2021, Section 4 and Figure 5).

Each batch is drawn at one resolution picked at random from a set (160…320 px for a 256 px model),
and its batch size is scaled by ``(base_size / size)**2`` so every step costs about the same:
more small images, fewer large ones. The paper reports that this both speeds up training and
improves accuracy, and that the network learns multi-scale representations without fine-tuning.

Under DDP every rank must run the same number of steps at the same resolutions, or the gradient
all-reduce deadlocks; so the resolution sequence depends only on (seed, epoch) while the indices
are sharded by rank.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


def default_sizes(base_size: int) -> list[int]:
    """Multiples of 32 from about 0.625× to 1.25× ``base_size`` (160…320 for 256), plus the base."""
    low = max(32, math.ceil(0.625 * base_size / 32) * 32)
    high = max(low, math.floor(1.25 * base_size / 32) * 32)
    return sorted({*range(low, high + 1, 32), base_size})


class MultiScaleBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, img_size)`` with a per-batch resolution and a batch size scaled to match.

    Call :meth:`set_epoch` before each epoch, like ``DistributedSampler``: the shuffle and the
    resolutions depend on ``(seed, epoch)``. With ``drop_last`` (the default) each rank gets an
    equal, disjoint share of the dataset and the few samples left over once no full batch fits are
    dropped (fewer than one batch at the largest size); without it shards are padded by wrapping
    around (a few samples seen twice) and the last batch is kept short.
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
        self._shard_len = num_samples // world_size if drop_last else math.ceil(num_samples / world_size)
        smallest = self.batch_size_for(max(sizes))
        if drop_last and self._shard_len < smallest:
            raise ValueError(
                f"each of {world_size} rank(s) gets {self._shard_len} samples, fewer than the smallest batch "
                f"({smallest} at {max(sizes)} px): lower base_batch_size or pass drop_last=False"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch_size_for(self, size: int) -> int:
        """``max(1, floor(base_batch_size * (base_size / size)**2))``, in exact integer arithmetic."""
        return max(1, self.base_batch_size * self.base_size**2 // size**2)

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

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = self.shard()
        start = 0
        for size, batch_size in self.batch_plan():
            yield [(index, size) for index in indices[start : start + batch_size]]
            start += batch_size

    def __len__(self) -> int:
        return len(self.batch_plan())
