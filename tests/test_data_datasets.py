"""ImageListDataset (bad files replaced, multi-scale indices) and find_unreadable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from mobilevit_torch.data.datasets import ImageListDataset, find_unreadable
from mobilevit_torch.data.folder import DataError, Sample
from mobilevit_torch.data.sampler import MultiScaleBatchSampler


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    """Five samples, the third of which is a text file named .jpg and the fifth a truncated JPEG."""
    items = []
    for i in range(5):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (10 + i, 8), (i * 40, 0, 0)).save(path)
        items.append(Sample(path=str(path), label=i))
    Path(items[2].path).write_text("not an image")
    noise = Image.effect_noise((64, 64), 80).convert("RGB")
    noise.save(items[4].path, quality=95)
    data = Path(items[4].path).read_bytes()
    Path(items[4].path).write_bytes(data[: len(data) // 2])
    return items


def sized(size: int) -> T.Compose:
    return T.Compose([T.ToImage(), T.Resize((size, size), antialias=True), T.ToDtype(torch.float32, scale=True)])


def test_bad_file_is_replaced_deterministically(samples: list[Sample], caplog: pytest.LogCaptureFixture) -> None:
    dataset = ImageListDataset(samples, sized(4))
    assert len(dataset) == 5
    image, label = dataset[1]
    assert image.shape == (3, 4, 4) and label == 1
    with caplog.at_level(logging.WARNING):
        assert dataset[2][1] == 3  # the next readable sample
        assert dataset[2][1] == 3
        assert dataset[4][1] == 0  # wraps around
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # each bad file is logged once
    assert samples[2].path in warnings[0] and samples[4].path in warnings[1]


def test_multi_scale_indices_pick_the_transform_for_their_size(samples: list[Sample]) -> None:
    built: list[int] = []

    def factory(size: int) -> T.Compose:
        built.append(size)
        return sized(size)

    dataset = ImageListDataset(samples, sized(8), transform_for_size=factory)
    assert dataset[(0, 16)][0].shape == (3, 16, 16)
    assert dataset[(1, 16)][0].shape == (3, 16, 16)
    assert dataset[(1, 24)][0].shape == (3, 24, 24)
    assert dataset[1][0].shape == (3, 8, 8)
    assert built == [16, 24]  # one transform per size

    with pytest.raises(TypeError, match="transform_for_size"):
        ImageListDataset(samples, sized(8))[(0, 16)]


def test_with_multi_scale_sampler_in_a_data_loader(samples: list[Sample]) -> None:
    good = [s for i, s in enumerate(samples) if i not in (2, 4)] * 4  # 12 samples
    dataset = ImageListDataset(good, transform_for_size=sized)
    batch_sampler = MultiScaleBatchSampler(len(good), base_size=16, base_batch_size=2, sizes=[8, 16], seed=0)
    shapes = [(images.shape, labels.shape) for images, labels in DataLoader(dataset, batch_sampler=batch_sampler)]
    assert len(shapes) == len(batch_sampler) > 0
    assert {shape[-1] for shape, _ in shapes} == {8, 16}  # 8 images at 8 px, 2 at 16 px
    for image_shape, label_shape in shapes:
        size = image_shape[-1]
        assert image_shape == (batch_sampler.batch_size_for(size), 3, size, size)
        assert label_shape == (image_shape[0],)


def test_all_bad_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 1 images"):
        ImageListDataset([Sample(path=str(tmp_path / "a.jpg"), label=0)])[0]


def test_find_unreadable(samples: list[Sample], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        good, bad = find_unreadable(samples, num_workers=2)
    assert good == [samples[0], samples[1], samples[3]]
    assert [path for path, _ in bad] == [samples[2].path, samples[4].path]
    assert "not a recognised image format" in bad[0][1] and "truncated" in bad[1][1]
    assert sum(samples[2].path in r.getMessage() for r in caplog.records) == 1
