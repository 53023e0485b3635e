"""decode_images: both resize modes, skipped bad files, and a disk cache that decodes nothing the second time."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from mobilevit_torch.data import cache
from mobilevit_torch.data.cache import DecodedImages, decode_images
from mobilevit_torch.data.folder import DataError, Sample, scan_image_folder

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def striped(path: Path, colors: list[tuple[int, int, int]], *, width: int = 48, height: int = 16) -> Path:
    """Vertical stripes of equal width, one per colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height))
    step = width // len(colors)
    for i, color in enumerate(colors):
        image.paste(color, (i * step, 0, (i + 1) * step, height))
    image.save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    striped(root / "a" / "wide.png", [RED, GREEN, BLUE])
    striped(root / "a" / "tall.png", [BLUE], width=10, height=30)
    Image.new("L", (20, 20), 128).save(root / "a" / "gray.jpg")
    striped(root / "b" / "rgb.bmp", [GREEN])
    Image.new("RGBA", (12, 12), (0, 0, 0, 0)).save(root / "b" / "clear.png")
    (root / "b" / "bad.jpg").write_text("not an image")
    return root


def never_decode(*args: object, **kwargs: object) -> None:
    raise AssertionError("decoded although the cache should have been used")


def test_squash_keeps_everything_and_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    path = str(striped(tmp_path / "x" / "stripes.png", [RED, GREEN, BLUE], width=96))
    samples = [Sample(path=path, label=0)]

    squashed = decode_images(samples, size=12, mode="squash", cache_dir=None, progress=False).images[0]
    assert squashed.shape == (3, 12, 12) and squashed.dtype == torch.uint8
    assert squashed[:, 6, 0].tolist() == list(RED) and squashed[:, 6, 11].tolist() == list(BLUE)
    assert squashed[:, 6, 6].tolist() == list(GREEN)

    cropped = decode_images(samples, size=12, mode="center_crop", cache_dir=None, progress=False).images[0]
    # Shorter side 16 -> 12 makes the image 72x12; the central 12 columns lie inside the green stripe.
    assert cropped.shape == (3, 12, 12)
    assert (cropped[1] >= 250).all() and (cropped[0] <= 5).all() and (cropped[2] <= 5).all()

    # A tall image keeps its middle too: horizontal stripes, red on top, green between, blue at the bottom.
    tall = tmp_path / "x" / "tall.png"
    Image.open(striped(tall, [RED, GREEN, BLUE], width=96)).transpose(Image.Transpose.ROTATE_270).save(tall)
    cropped = decode_images([Sample(str(tall), 0)], size=12, mode="center_crop", cache_dir=None, progress=False)
    middle = cropped.images[0]
    assert (middle[1] >= 250).all() and (middle[0] <= 5).all() and (middle[2] <= 5).all()


def test_decode_skips_bad_files(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    samples, _ = scan_image_folder(folder)
    with caplog.at_level(logging.WARNING):
        decoded = decode_images(samples, size=8, mode="center_crop", cache_dir=None, num_workers=2, progress=False)
    assert isinstance(decoded, DecodedImages)
    good = [s for s in samples if not s.path.endswith("bad.jpg")]
    assert decoded.paths == [s.path for s in good]  # the caller's order, minus the bad file
    assert decoded.labels.tolist() == [s.label for s in good] and decoded.labels.dtype == torch.int64
    assert decoded.images.shape == (5, 3, 8, 8)
    assert decoded.skipped == [(str(folder / "b" / "bad.jpg"), "not a recognised image format")]
    bad_warnings = [r for r in caplog.records if "bad.jpg" in r.getMessage()]
    assert len(bad_warnings) == 1 and "not a recognised image format" in bad_warnings[0].getMessage()
    by_path = dict(zip(decoded.paths, decoded.images, strict=True))
    assert by_path[str(folder / "a" / "gray.jpg")].unique().tolist() == [128]
    assert by_path[str(folder / "b" / "clear.png")].unique().tolist() == [255]  # transparent -> white


def test_all_bad_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("nope")
    samples = [Sample(path=str(tmp_path / name), label=0) for name in ("a.jpg", "b.png")]
    with pytest.raises(DataError, match="none of the 2 images could be read"):
        decode_images(samples, size=8, mode="squash", cache_dir=None, progress=False)
    with pytest.raises(DataError, match="no samples"):
        decode_images([], size=8, mode="squash", cache_dir=None, progress=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        decode_images(samples, size=8, mode="stretch", cache_dir=None, progress=False)  # type: ignore[arg-type]


def test_second_call_decodes_nothing(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples, _ = scan_image_folder(folder)
    cache_dir = tmp_path / "cache" / "nested"  # created on demand
    first = decode_images(samples, size=8, mode="squash", cache_dir=cache_dir, num_workers=2, progress=False)
    files = list(cache_dir.glob("*.pt"))
    assert len(files) == 1 and not list(cache_dir.glob("*.tmp"))

    monkeypatch.setattr(cache, "load_rgb", never_decode)
    second = decode_images(samples, size=8, mode="squash", cache_dir=cache_dir, num_workers=2, progress=False)
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)
    assert second.paths == first.paths and second.skipped == first.skipped

    # Another order of the same samples is the same cache; the result follows the caller's order.
    reordered = decode_images(samples[::-1], size=8, mode="squash", cache_dir=cache_dir, progress=False)
    assert reordered.paths == first.paths[::-1]
    assert torch.equal(reordered.images, first.images.flip(0))

    # A different size, mode, set of files or labelling (a class folder added that sorts first) is a different
    # cache: these must decode, and here fail.
    relabelled = [Sample(s.path, s.label + 1) for s in samples]
    for size, mode, subset in (
        (16, "squash", samples), (8, "center_crop", samples), (8, "squash", samples[:2]), (8, "squash", relabelled)
    ):  # fmt: skip
        with pytest.raises(AssertionError, match="decoded although"):
            decode_images(subset, size=size, mode=mode, cache_dir=cache_dir, progress=False)


def test_changed_file_invalidates_the_cache(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples, _ = scan_image_folder(folder)
    decode_images(samples, size=8, mode="squash", cache_dir=tmp_path / "cache", progress=False)
    touched = samples[0].path
    stat = os.stat(touched)
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    monkeypatch.setattr(cache, "load_rgb", never_decode)
    with pytest.raises(AssertionError, match="decoded although"):
        decode_images(samples, size=8, mode="squash", cache_dir=tmp_path / "cache", progress=False)


def test_corrupt_cache_is_rebuilt(folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    samples, _ = scan_image_folder(folder)
    first = decode_images(samples, size=8, mode="squash", cache_dir=tmp_path / "cache", progress=False)
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    for garbage in (b"garbage", cache_file.read_bytes()[:100]):
        cache_file.write_bytes(garbage)
        with caplog.at_level(logging.WARNING):
            again = decode_images(samples, size=8, mode="squash", cache_dir=tmp_path / "cache", progress=False)
        assert torch.equal(again.images, first.images)
        assert any("ignoring unreadable cache" in r.getMessage() for r in caplog.records)
        caplog.clear()
        assert torch.load(cache_file, weights_only=True)["images"].shape == first.images.shape  # rewritten

    # A readable file with the wrong contents is not trusted either.
    torch.save({"version": 1, "images": torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "labels": torch.zeros(1),
                "paths": ["x"], "skipped": []}, cache_file)
    assert torch.equal(
        decode_images(samples, size=8, mode="squash", cache_dir=tmp_path / "cache", progress=False).images,
        first.images,
    )


def test_unwritable_cache_dir_warns_once_and_decodes_anyway(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache folder that cannot be created (a path under a regular file) is found before decoding: one warning,
    the images still come back, and nothing is raised after the work is done."""
    (tmp_path / "file").write_text("a regular file")
    cache_dir = tmp_path / "file" / "cache"
    samples, _ = scan_image_folder(folder)
    monkeypatch.setattr(cache, "_warned_dirs", set(), raising=False)
    written: list[Path] = []
    monkeypatch.setattr(cache, "_write_cache", lambda path, *a, **k: written.append(path))
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch.data.cache"):
        first = decode_images(samples, size=8, mode="squash", cache_dir=cache_dir, progress=False)
        second = decode_images(samples, size=8, mode="center_crop", cache_dir=cache_dir, progress=False)
    assert len(first) == len(second) == len(samples) - 1  # bad.jpg skipped
    assert not written, "no write is attempted into a folder known to be unwritable"
    warnings = [r.getMessage() for r in caplog.records if "decode cache" in r.getMessage()]
    assert len(warnings) == 1 and "cannot write the decode cache to" in warnings[0], warnings
    assert "continuing without it" in warnings[0]


def test_failed_cache_write_is_a_warning(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    samples, _ = scan_image_folder(folder)
    monkeypatch.setattr(cache, "_warned_dirs", set(), raising=False)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "_write_cache", disk_full)
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch.data.cache"):
        decoded = decode_images(samples, size=8, mode="squash", cache_dir=tmp_path / "cache", progress=False)
    assert len(decoded) == len(samples) - 1
    assert "No space left on device; continuing without it" in caplog.text
