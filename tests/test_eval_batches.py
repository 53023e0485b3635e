"""Validation batches of one shape: balanced sizes, padding images whose logits are dropped."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from train_helpers import make_folder

from mobilevit_torch import create_model
from mobilevit_torch.data.folder import Sample
from mobilevit_torch.preprocessing import Preprocessing
from mobilevit_torch.training.distributed import DistInfo
from mobilevit_torch.training.pipeline import CachedEvalBatches, Shard, eval_batch_size, loader_eval_batches
from mobilevit_torch.training.validation import evaluate


@pytest.mark.parametrize(
    ("count", "max_batch", "expected"),
    [(331, 250, 166), (250, 250, 250), (251, 250, 126), (500, 250, 250), (10, 250, 10), (7, 3, 3), (0, 250, 250)],
)
def test_eval_batch_size_uses_the_fewest_batches_of_one_size(count: int, max_batch: int, expected: int) -> None:
    size = eval_batch_size(count, max_batch)
    assert size == expected
    if count:
        batches = -(-count // size)
        assert size <= max_batch and batches == -(-count // max_batch) and batches * size - count < batches


def cached_batches(count: int, batch_size: int, shard: Shard | None = None) -> CachedEvalBatches:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 40, 40), dtype=torch.uint8)
    labels = torch.arange(count) % 3
    return CachedEvalBatches(
        images, labels, batch_size=batch_size, img_size=32, pre=Preprocessing(), shard=shard or Shard()
    )


def test_cached_eval_batches_have_one_shape_and_pad_with_the_last_image() -> None:
    batches = list(cached_batches(7, 3))
    assert [tuple(x.shape) for x, _ in batches] == [(3, 3, 32, 32)] * 3
    assert [len(y) for _, y in batches] == [3, 3, 1]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(7) % 3)
    last_x, _ = batches[-1]
    assert torch.equal(last_x[1], last_x[0]) and torch.equal(last_x[2], last_x[0])
    # Each rank balances its own share: 7 images over 2 ranks are 4 (two batches of 2) and 3 (one of 3).
    assert [len(y) for _, y in cached_batches(7, 3, Shard(rank=0, world_size=2))] == [2, 2]
    assert [len(y) for _, y in cached_batches(7, 3, Shard(rank=1, world_size=2))] == [3]


def test_evaluate_drops_the_padding_logits() -> None:
    model = create_model("mobilevit_xxs", num_classes=3).eval()
    info, cpu = DistInfo(), torch.device("cpu")
    args = {
        "num_classes": 3,
        "device": cpu,
        "autocast": contextlib.nullcontext(),
        "memory_format": torch.contiguous_format,
        "info": info,
    }
    padded = cached_batches(7, 3)
    whole = cached_batches(7, 7)
    assert len(list(padded)) == 3 and len(list(whole)) == 1
    with torch.no_grad():
        loss_a, acc_a, cm_a = evaluate(model, padded, **args)
        loss_b, acc_b, cm_b = evaluate(model, whole, **args)
    assert int(cm_a.sum()) == 7
    assert torch.equal(cm_a, cm_b) and acc_a == acc_b
    assert loss_a == pytest.approx(loss_b, rel=1e-5)


def test_loader_eval_batches_have_one_shape(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", per_class=3, odd_files=False)
    samples = [
        Sample(str(path), label)
        for label, name in enumerate(("cat", "dog", "fox"))
        for path in sorted((root / name).glob("*.jpg"))
    ]
    pre = Preprocessing(input_size=32)
    batches = list(loader_eval_batches(samples, batch_size=4, pre=pre, num_workers=0, device=torch.device("cpu")))
    assert [tuple(x.shape) for x, _ in batches] == [(3, 3, 32, 32)] * 3
    assert [len(y) for _, y in batches] == [3, 3, 3]
    batches = list(loader_eval_batches(samples[:7], batch_size=4, pre=pre, num_workers=0, device=torch.device("cpu")))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 32, 32)] * 2
    assert [len(y) for _, y in batches] == [4, 3]
    assert torch.equal(batches[-1][0][3], batches[-1][0][2])


def test_both_data_paths_feed_validation_the_same_pixels(tmp_path: Path) -> None:
    """The decode cache's validation batches (decoded once, centre-cropped and normalised on the device) equal the
    DataLoader path's (eval_transform per image, what evaluate.py runs), with BGR and a mean/std that are not the
    identity: landscape and portrait photos, smooth gradients, so a shifted crop or a squashed image shows."""
    from PIL import Image

    from mobilevit_torch.data.folder import make_split
    from mobilevit_torch.training.data_setup import build_data
    from tests.train_helpers import tiny_config

    rows, columns = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    for index, (name, (width, height)) in enumerate([("a", (90, 60)), ("a", (60, 96)), ("b", (96, 64))] * 2):
        pixels = torch.stack([columns * 2.5, rows * 2.5, torch.full_like(rows, 40.0 * index)], -1)[:height, :width]
        path = tmp_path / "photos" / name / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy()).save(path)
    split = make_split(tmp_path / "photos", seed=0, val_fraction=0.5)
    pre = Preprocessing(
        input_size=32, crop_pct=0.8, interpolation="bicubic", channel_order="BGR",
        mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3),
    )  # fmt: skip
    passes = []
    for cache in (True, False):
        options = {"data.cache": cache, "data.num_workers": 0, "data.batch_size": 2, "data.img_size": 32}
        config = tiny_config(tmp_path, tmp_path / "photos", **options)  # the split is given: its settings are not used
        data = build_data(config, split, [], pre, torch.device("cpu"), DistInfo())
        x, y = zip(*data.val_batches(), strict=True)
        passes.append((torch.cat(x), torch.cat(y)))
    (cached_x, cached_y), (loader_x, loader_y) = passes
    assert torch.equal(cached_y, loader_y) and cached_x.shape == (len(split.val), 3, 32, 32)
    torch.testing.assert_close(cached_x, loader_x, atol=1e-5, rtol=0)
