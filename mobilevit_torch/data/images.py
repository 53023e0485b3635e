"""Read any image file into a loaded, upright, 8-bit RGB PIL image — or fail with one short error.

Photo folders collected by users hold every mode Pillow knows: grayscale scans, PNGs with alpha,
CMYK JPEGs from print workflows, 16-bit TIFFs from scientific cameras, palette GIFs. The model wants
three 8-bit channels, so everything is normalised here, in one place, and every way a file can be
broken (empty, truncated, not an image at all) surfaces as :class:`BadImageError` naming the file.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

logger = logging.getLogger(__name__)


def _reads_avif() -> bool:
    """Pillow decodes AVIF from 11.3 on, when built with libavif (its wheels are)."""
    try:
        return features.check_module("avif")
    except ValueError:  # an older Pillow: no AVIF module at all
        return False


# The file types listed as images: those this Pillow decodes (.jfif and .jpe are JPEG). HEIC needs a
# plugin Pillow does not ship (pillow-heif), so such files are counted and skipped, not listed.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    | ({".avif"} if _reads_avif() else set())
)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_WHITE = (255, 255, 255)


class BadImageError(ValueError):
    """A file that cannot be read as an image; ``path`` and ``reason`` are kept as attributes."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_rgb(path: str | os.PathLike[str], *, draft_size: int | None = None) -> Image.Image:
    """Decode ``path`` into a fully loaded mode-"RGB" image with EXIF orientation applied.

    ``draft_size`` lets the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding, which is
    several times faster for large photos; the draft never goes below ``draft_size`` on either
    side, so a later resize to ``draft_size`` loses nothing. Other formats ignore it.
    """
    try:
        file_size = os.stat(path).st_size
    except OSError as error:
        raise BadImageError(path, f"cannot read file ({error.strerror or error})") from None
    if file_size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        with _open(path) as image:
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            # exif_transpose returns a new image, detached from the file we are about to close.
            image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise BadImageError(path, "not a recognised image format") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit_name = "2 x PIL.Image.MAX_IMAGE_PIXELS"
        raise BadImageError(
            path, f"refused: more than {limit:,} pixels, Pillow's decompression-bomb limit ({limit_name})"
        ) from None
    except Exception as error:  # Pillow signals corrupt data with OSError, SyntaxError, struct.error, ...
        raise BadImageError(path, f"corrupt or truncated image data ({_short(error)})") from None
    return to_rgb(image, path=path)


def pil_to_rgb(image: Image.Image, *, name: str = "<image>") -> Image.Image:
    """An image already opened with PIL, normalised as :func:`load_rgb` normalises its file: loaded,
    EXIF orientation applied, 8-bit RGB. ``name`` stands for the missing path in a :class:`BadImageError`."""
    try:
        image.load()  # Image.open is lazy: a truncated file fails here
        # A copy, upright: the caller's image is left as it was (exif_transpose drops the orientation
        # tag from what it returns, so an image made upright before is not turned again).
        image = ImageOps.exif_transpose(image)
    except Exception as error:
        raise BadImageError(name, f"corrupt or truncated image data ({_short(error)})") from None
    return to_rgb(image, path=name)


def _open(path: str | os.PathLike[str]) -> Image.Image:
    """``Image.open``, with Pillow's DecompressionBombWarning (a photo of more than ~89 megapixels, a
    paragraph per process) replaced by one line of ours naming the file, once per file."""
    with _OPEN_LOCK, warnings.catch_warnings():  # the warning filters are process-wide: one thread at a time
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit and str(path) not in _WARNED_LARGE:
        _WARNED_LARGE.add(str(path))
        logger.warning(
            "%s: a very large image (%d x %d = %s pixels, more than Pillow's decompression-bomb warning size "
            "of %s); decoding it anyway",
            path,
            width,
            height,
            f"{width * height:,}",
            f"{limit:,}",
        )
    return image


_OPEN_LOCK = threading.Lock()
_WARNED_LARGE: set[str] = set()


def to_rgb(image: Image.Image, *, path: str | os.PathLike[str] = "<image>") -> Image.Image:
    """Convert a loaded image of any mode to 8-bit RGB.

    Transparency is composited on white (the usual background for product photos and icons, and
    what a viewer shows); 16-bit data is scaled, not clipped, so a 16-bit photo is not blown out.
    """
    if image.width == 0 or image.height == 0:  # an empty crop: resizing it would divide by zero
        raise BadImageError(path, f"empty image ({image.width} x {image.height} pixels)")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        return Image.fromarray(_integer_to_uint8(np.asarray(image), wide=mode == "I"), mode="L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as error:
        raise BadImageError(path, f"unsupported image mode {mode!r} ({_short(error)})") from None


def _integer_to_uint8(values: np.ndarray, *, wide: bool) -> np.ndarray:
    """16-bit (or 32-bit integer holding 16-bit) samples -> 8-bit by the full-range map 65535 -> 255.

    ``wide``: 32-bit integer samples (mode ``I``), whose bit depth the file does not tell. All within
    0-255, they are 8-bit values (an 8-bit array saved as 32-bit integers), kept as they are: read as
    16-bit they would be a black picture."""
    values = values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if wide and low >= 0 and high <= 255:
        return values.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return ((values * 255 + 32767) // 65535).astype(np.uint8)
    # Genuine 32-bit data has no fixed white point: stretch its range.
    return _stretch(values.astype(np.float64))


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] map to [0, 255]; any other range is stretched. NaN/inf become 0."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.min() >= 0.0 and values.max() <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    return _stretch(values)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _short(error: BaseException, limit: int = 160) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
