"""MultiScaleBatchSampler: batch sizes scaled by resolution, per-epoch determinism, DDP lock-step shards."""

from __future__ import annotations

from collections import Counter

import pytest

from mobilevit_torch.data.sampler import MultiScaleBatchSampler, default_sizes
from mobilevit_torch.training.pipeline import multiscale_sizes


def sampler(num_samples: int = 1000, **overrides: object) -> MultiScaleBatchSampler:
    args: dict = {"base_size": 256, "base_batch_size": 32, "seed": 0} | overrides
    return MultiScaleBatchSampler(num_samples, **args)


def test_default_sizes() -> None:
    assert default_sizes(256) == [160, 192, 224, 256, 288, 320]
    assert default_sizes(224) == [160, 192, 224, 256]
    assert sampler().sizes == [160, 192, 224, 256, 288, 320]
    assert sampler(sizes=[320, 160, 160]).sizes == [160, 320]
    for base in (128, 224, 256, 320):  # training's rule is the sampler's, on both data paths
        assert multiscale_sizes(base, None) == default_sizes(base)
        assert base * 0.625 <= min(default_sizes(base)) and max(default_sizes(base)) <= base * 1.25
    assert multiscale_sizes(256, [64, 96]) == [64, 96]


def test_batch_size_scales_with_inverse_area() -> None:
    s = sampler()
    # floor(32 * (256 / s)**2): equal pixels per batch, so every step costs about the same.
    assert {size: s.batch_size_for(size) for size in s.sizes} == {
        160: 81, 192: 56, 224: 41, 256: 32, 288: 25, 320: 20,
    }
    assert sampler(base_batch_size=1).batch_size_for(320) == 1  # never zero

    for batch in s:
        sizes = {key.img_size for key in batch}
        assert len(sizes) == 1  # one resolution per batch
        assert len(batch) == s.batch_size_for(sizes.pop())


def test_one_epoch_covers_the_data_once() -> None:
    s = sampler(1000)
    indices = [key.index for batch in s for key in batch]
    assert len(indices) == len(set(indices))
    assert 1000 - s.batch_size_for(320) < len(indices) <= 1000  # at most one small batch's worth dropped
    assert len(s) == len(list(s))
    assert len(Counter(key.img_size for batch in s for key in batch)) > 1  # resolutions do vary


def test_epochs_are_deterministic_and_different() -> None:
    s = sampler(seed=7)
    s.set_epoch(3)
    epoch3 = list(s)
    other = sampler(seed=7)
    other.set_epoch(3)
    assert list(other) == epoch3
    s.set_epoch(4)
    assert list(s) != epoch3
    assert list(sampler(seed=8)) != list(sampler(seed=7))


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_ranks_are_disjoint_and_in_lock_step(epoch: int) -> None:
    ranks = [sampler(1001, seed=3, rank=rank, world_size=2) for rank in range(2)]
    for s in ranks:
        s.set_epoch(epoch)
    batches = [list(s) for s in ranks]

    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == len(ranks[1])
    size_sequences = [[batch[0].img_size for batch in rank_batches] for rank_batches in batches]
    assert size_sequences[0] == size_sequences[1]  # every step at the same resolution on both ranks
    assert [len(b) for b in batches[0]] == [len(b) for b in batches[1]]

    seen = [{key.index for batch in rank_batches for key in batch} for rank_batches in batches]
    assert not seen[0] & seen[1]
    assert set(ranks[0].shard()) | set(ranks[1].shard()) <= set(range(1001))
    assert len(ranks[0].shard()) == len(ranks[1].shard()) == 500


def test_without_drop_last_everything_is_seen() -> None:
    ranks = [sampler(1001, world_size=2, rank=rank, drop_last=False) for rank in range(2)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0])
    seen = {key.index for rank_batches in batches for batch in rank_batches for key in batch}
    assert seen == set(range(1001))
    assert sum(len(b) for b in batches[0]) == 501  # padded by wrapping around


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="rank"):
        sampler(rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than the smallest batch"):
        sampler(30, world_size=2)  # 15 per rank, but a 320 px batch holds 20
    assert len(sampler(30, world_size=2, drop_last=False)) >= 1
    with pytest.raises(ValueError, match="positive"):
        sampler(0)


def test_skipped_batches_and_augmentation_seeds() -> None:
    """``skip`` leaves out an epoch's first batches, the rest unchanged; every sample has its own
    augmentation seed, fixed by (seed, epoch, its place in the epoch's global order)."""
    s = sampler(1000, seed=5)
    s.set_epoch(2)
    whole = list(s)
    s.set_epoch(2, skip=3)
    assert list(s) == whole[3:] and len(s) == len(whole)
    seeds = [key.seed for batch in whole for key in batch]
    assert len(set(seeds)) == len(seeds)
    s.set_epoch(3)
    assert not set(seeds) & {key.seed for batch in s for key in batch}

    ranks = [sampler(1000, seed=5, rank=rank, world_size=2) for rank in range(2)]
    for r in ranks:
        r.set_epoch(2)
    by_index = {key.index: key.seed for batch in whole for key in batch}
    on_ranks = {key.index: key.seed for r in ranks for batch in r for key in batch}
    shared = by_index.keys() & on_ranks.keys()
    assert len(shared) > 900 and all(by_index[i] == on_ranks[i] for i in shared), "a sample's draws: any world size"
