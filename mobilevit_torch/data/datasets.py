"""A per-image Dataset over :class:`Sample` lists, for the classic DataLoader path with augmentation.

One unreadable photo must not kill an epoch hours into training: it is logged once and replaced
by the next readable sample (deterministically, so a run is reproducible). A quick
:func:`find_unreadable` pass before training finds such files up front instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.utils.data import Dataset

from mobilevit_torch.data.folder import DataError, Sample
from mobilevit_torch.data.images import BadImageError, load_rgb

logger = logging.getLogger(__name__)

Transform = Callable[[Any], Any]
# Small enough to be fast, large enough that the decoder reads the whole JPEG stream.
_VERIFY_DRAFT_SIZE = 32


class ImageListDataset(Dataset):
    """``(transform(image), label)`` for each sample; ``dataset[(index, img_size, seed)]`` for multi-scale batches.

    With :class:`~mobilevit_torch.data.sampler.MultiScaleBatchSampler` each index arrives with the
    resolution of its batch, and ``transform_for_size(img_size)`` builds (once per size) the
    transform for it, and with a seed: the transform's random draws come from it alone (torch's own
    generator is left as it was), so the result does not depend on which process makes it.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Transform | None = None,
        *,
        transform_for_size: Callable[[int], Transform] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.transform_for_size = transform_for_size
        self._sized: dict[int, Transform] = {}
        self._bad: set[int] = set()  # per process: each DataLoader worker keeps its own

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int] | tuple[int, int, int]) -> tuple[Any, int]:
        seed = None
        if isinstance(key, tuple):
            index, img_size, *drawn = key
            transform = self._transform_for(int(img_size))
            seed = drawn[0] if drawn else None
        else:
            index, transform = key, self.transform
        image, label = self._load(int(index))
        if transform is None:
            return image, label
        if seed is None:
            return transform(image), label
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from torch's generator
            torch.manual_seed(seed)
            return transform(image), label

    def _transform_for(self, img_size: int) -> Transform:
        if self.transform_for_size is None:
            raise TypeError(
                "got an (index, img_size) pair from a multi-scale sampler, but the dataset has no transform_for_size"
            )
        if img_size not in self._sized:
            self._sized[img_size] = self.transform_for_size(img_size)
        return self._sized[img_size]

    def _load(self, index: int) -> tuple[Any, int]:
        """The image at ``index``, or at the next readable index after it (wrapping around)."""
        n = len(self.samples)
        for step in range(n):
            candidate = (index + step) % n
            if candidate in self._bad:
                continue
            sample = self.samples[candidate]
            try:
                return load_rgb(sample.path), sample.label
            except BadImageError as error:
                self._bad.add(candidate)
                logger.warning("unreadable image %s (%s); using another sample in its place", error.path, error.reason)
        raise DataError(f"none of the {n} images in this dataset could be read")


def find_unreadable(
    samples: Sequence[Sample], *, num_workers: int = 4, warn: bool = True
) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Split ``samples`` into the readable ones (order kept) and ``(path, reason)`` for the rest, each
    logged as a warning unless ``warn=False`` (a caller that reports them itself).

    Each file is opened and fully decoded at a small JPEG draft, which is quick but still reads
    every byte, so empty, truncated and mislabelled files are all caught.
    """
    def check(sample: Sample) -> str | None:
        try:
            load_rgb(sample.path, draft_size=_VERIFY_DRAFT_SIZE)
        except BadImageError as error:
            return error.reason
        return None

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        reasons = list(pool.map(check, samples))
    good, bad = [], []
    for sample, reason in zip(samples, reasons, strict=True):
        if reason is None:
            good.append(sample)
        else:
            if warn:
                logger.warning("unreadable image %s: %s", sample.path, reason)
            bad.append((sample.path, reason))
    return good, bad
