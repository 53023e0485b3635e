"""Decode a folder of photos once into one uint8 tensor, and reuse it across epochs and runs.

Decoding a JPEG costs far more than a training step of a small model on a few thousand images, so
the fast path decodes every image to a fixed size once (in threads: Pillow releases the GIL while
decoding and resizing) and keeps the result on disk. The cache file's name is a hash of what went
into it — every path, label, file size and modification time, the size and the resize mode — so a
changed, added or removed photo gives a new file instead of stale pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from mobilevit_torch.data.folder import DataError, Sample
from mobilevit_torch.data.images import BadImageError, load_rgb
from mobilevit_torch.files import atomic_write

logger = logging.getLogger(__name__)

ResizeMode = Literal["squash", "center_crop"]
RESIZE_MODES: tuple[str, ...] = ("squash", "center_crop")
# Bump when decoding changes (resampling, colour handling) so old caches are not reused.
CACHE_VERSION = 1


@dataclass
class DecodedImages:
    images: torch.Tensor  # uint8 [N, 3, S, S], RGB
    labels: torch.Tensor  # int64 [N]
    paths: list[str]
    skipped: list[tuple[str, str]]  # (path, reason)

    def __len__(self) -> int:
        return len(self.paths)


def decode_images(
    samples: list[Sample],
    *,
    size: int,
    mode: ResizeMode,
    cache_dir: Path | None,
    num_workers: int = 4,
    progress: bool = True,
) -> DecodedImages:
    """Every readable sample as a ``size``×``size`` uint8 RGB tensor, in ``samples`` order.

    ``mode="squash"`` resizes the whole image to a square (the Keras MobileViT example's input:
    nothing is cut off, aspect ratio is not kept); ``mode="center_crop"`` resizes the shorter side
    to ``size`` and keeps the central square (evaluation). Unreadable files are skipped with a
    warning each and listed in ``skipped``. With ``cache_dir`` the result is stored there and a
    later call with the same files, size and mode decodes nothing.
    """
    if not samples:
        raise DataError("no samples to decode")
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if size < 1 or num_workers < 1:
        raise ValueError(f"size and num_workers must be positive, got size={size}, num_workers={num_workers}")

    # The cache holds each distinct sample once, in sorted order, whatever order the caller uses.
    canonical = sorted(set(samples), key=lambda s: (s.path, s.label))
    cache_file = None
    decoded = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"decoded-{mode}-{size}px-{cache_key(canonical, size=size, mode=mode)}.pt"
        decoded = _read_cache(cache_file, size=size)
        if decoded is not None:
            logger.info("loaded %d decoded images from %s", len(decoded), cache_file)
            if decoded.skipped:
                logger.warning("%d unreadable file(s) were skipped when %s was built", len(decoded.skipped), cache_file)
    if decoded is None:
        if cache_file is not None and not _cache_dir_writable(cache_file.parent):
            cache_file = None  # checked before decoding: minutes of work are not lost at the end
        decoded = _decode_all(canonical, size=size, mode=mode, num_workers=num_workers, progress=progress)
        if cache_file is not None:
            try:
                _write_cache(cache_file, decoded, size=size, mode=mode)
            except OSError as error:  # e.g. the disk filled up while writing
                _warn_unwritable(cache_file.parent, error)
    return _in_order(decoded, samples)


_warned_dirs: set[str] = set()


def _cache_dir_writable(directory: Path) -> bool:
    """Whether a cache file can be written into ``directory`` (created if missing); warns once per folder if not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        _warn_unwritable(directory, error)
        return False
    return True


def _warn_unwritable(directory: Path, error: OSError) -> None:
    if str(directory) not in _warned_dirs:
        _warned_dirs.add(str(directory))
        reason = error.strerror or type(error).__name__
        logger.warning("cannot write the decode cache to %s: %s; continuing without it", directory, reason)


def cache_key(samples: list[Sample], *, size: int, mode: str) -> str:
    """SHA-1 of the samples (sorted) with each file's size and mtime, and the decode settings."""
    files = []
    for sample in sorted(samples, key=lambda s: (s.path, s.label)):
        try:
            stat = os.stat(sample.path)
            files.append([sample.path, sample.label, stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([sample.path, sample.label, None, None])
    payload = {"version": CACHE_VERSION, "size": size, "mode": mode, "files": files}
    return hashlib.sha1(json.dumps(payload, separators=(",", ":")).encode("utf-8")).hexdigest()


def resize_image(image: Image.Image, *, size: int, mode: ResizeMode) -> Image.Image:
    """``size``×``size`` by squashing the whole image, or by resizing the shorter side and centre-cropping."""
    width, height = image.size
    if mode == "squash":
        return image.resize((size, size), Image.Resampling.BICUBIC)
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _decode_all(
    samples: list[Sample], *, size: int, mode: ResizeMode, num_workers: int, progress: bool
) -> DecodedImages:
    images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    ok = [False] * len(samples)
    reasons: dict[int, str] = {}

    def decode(index: int) -> None:
        image = load_rgb(samples[index].path, draft_size=size)
        pixels = np.array(resize_image(image, size=size, mode=mode))  # [S, S, 3], writable for torch
        images[index].copy_(torch.from_numpy(pixels).permute(2, 0, 1))  # [S, S, 3] -> [3, S, S]
        ok[index] = True

    with (
        ThreadPoolExecutor(max_workers=num_workers) as pool,
        tqdm(total=len(samples), unit="img", desc=f"decoding {size}px", disable=not progress) as bar,
    ):
        futures = {pool.submit(decode, index): index for index in range(len(samples))}
        for future in as_completed(futures):
            try:
                future.result()
            except BadImageError as error:
                reasons[futures[future]] = error.reason
                logger.warning("skipping unreadable image %s: %s", error.path, error.reason)
            bar.update(1)

    keep = [index for index in range(len(samples)) if ok[index]]
    skipped = [(samples[index].path, reasons[index]) for index in sorted(reasons)]
    if not keep:
        first = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3])
        raise DataError(f"none of the {len(samples)} images could be read (first: {first})")
    kept = images if len(keep) == len(samples) else images[torch.tensor(keep)]
    return DecodedImages(
        images=kept,
        labels=torch.tensor([samples[index].label for index in keep], dtype=torch.int64),
        paths=[samples[index].path for index in keep],
        skipped=skipped,
    )


def _in_order(decoded: DecodedImages, samples: list[Sample]) -> DecodedImages:
    """Rows of ``decoded`` (one per distinct sample) rearranged to follow ``samples``."""
    pairs = zip(decoded.paths, decoded.labels.tolist(), strict=True)
    row_of = {(path, label): row for row, (path, label) in enumerate(pairs)}
    rows = [row_of[(s.path, s.label)] for s in samples if (s.path, s.label) in row_of]
    bad = dict(decoded.skipped)
    skipped = list(dict.fromkeys((s.path, bad[s.path]) for s in samples if s.path in bad))
    if rows == list(range(len(decoded))):
        return DecodedImages(images=decoded.images, labels=decoded.labels, paths=decoded.paths, skipped=skipped)
    index = torch.tensor(rows, dtype=torch.int64)
    return DecodedImages(
        images=decoded.images[index],
        labels=decoded.labels[index],
        paths=[decoded.paths[row] for row in rows],
        skipped=skipped,
    )


def _write_cache(path: Path, decoded: DecodedImages, *, size: int, mode: str) -> None:
    """torch.save of plain tensors and lists, through a temporary file so readers never see half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "version": CACHE_VERSION,
        "size": size,
        "mode": mode,
        "images": decoded.images.contiguous(),
        "labels": decoded.labels,
        "paths": list(decoded.paths),
        "skipped": [[path, reason] for path, reason in decoded.skipped],
    }
    with atomic_write(path, "wb") as file:
        torch.save(payload, file)
    logger.info("cached %d decoded images in %s", len(decoded), path)


def _read_cache(path: Path, *, size: int) -> DecodedImages | None:
    """The cached images, or None when there is no cache or it is unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        images, labels, paths = payload["images"], payload["labels"], payload["paths"]
        skipped = [(str(p), str(r)) for p, r in payload["skipped"]]
        n = len(paths)
        if payload["version"] != CACHE_VERSION:
            raise ValueError(f"version {payload['version']}, expected {CACHE_VERSION}")
        if images.dtype != torch.uint8 or tuple(images.shape) != (n, 3, size, size):
            raise ValueError(f"images {images.dtype} {tuple(images.shape)} for {n} paths at {size}px")
        if labels.dtype != torch.int64 or tuple(labels.shape) != (n,):
            raise ValueError(f"labels {labels.dtype} {tuple(labels.shape)} for {n} paths")
    except Exception as error:  # a truncated zip, a foreign pickle, missing keys: all mean "rebuild"
        logger.warning("ignoring unreadable cache %s (%s: %s); decoding again", path, type(error).__name__, error)
        return None
    return DecodedImages(images=images, labels=labels, paths=[str(p) for p in paths], skipped=skipped)
