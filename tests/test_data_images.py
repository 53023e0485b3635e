"""load_rgb: every odd image mode becomes sensible 8-bit RGB; every broken file becomes BadImageError."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilevit_torch.data.images import IMAGE_EXTENSIONS, BadImageError, load_rgb, pil_to_rgb, to_rgb

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def noise_jpeg(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A JPEG of random pixels, so that its entropy-coded data is long and any truncation shows."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def test_extensions_are_lowercase_with_dot() -> None:
    expected = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    assert set(IMAGE_EXTENSIONS) - {".avif"} == expected  # .avif where this Pillow decodes it
    assert ".heic" not in IMAGE_EXTENSIONS  # Pillow needs a plugin (pillow-heif) for it


@pytest.mark.parametrize("suffix", sorted(IMAGE_EXTENSIONS))
def test_every_listed_type_decodes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"a{suffix}"
    Image.new("RGB", (8, 6), RED).save(path)  # Pillow picks the format from the extension
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (8, 6)


def test_rgb_jpeg_is_loaded_and_detached(tmp_path: Path) -> None:
    path = noise_jpeg(tmp_path / "a.jpg")
    image = load_rgb(path)
    path.unlink()  # the pixels must already be in memory, not read lazily from the file
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.asarray(image).std() > 20


@pytest.mark.parametrize(
    ("mode", "value", "suffix", "expected"),
    [
        ("L", 77, ".png", (77, 77, 77)),
        ("1", 1, ".bmp", WHITE),
        ("CMYK", (0, 255, 0, 0), ".jpg", (255, 0, 255)),  # no magenta ink missing: magenta
        ("RGB", (10, 200, 30), ".webp", None),
    ],
)
def test_plain_modes_convert(tmp_path: Path, mode: str, value: object, suffix: str, expected: tuple | None) -> None:
    path = tmp_path / f"x{suffix}"
    Image.new(mode, (8, 8), value).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.getpixel((4, 4)) == (expected or value)


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 4), (*RED, 255))
    rgba.putpixel((0, 0), (*BLUE, 0))  # fully transparent blue: must not show
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black over white: mid grey
    rgba.save(tmp_path / "rgba.png")
    image = load_rgb(tmp_path / "rgba.png")
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((2, 2)) == RED
    assert all(126 <= c <= 128 for c in image.getpixel((1, 0)))

    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")  # transparent black
    assert load_rgb(tmp_path / "la.png").getpixel((1, 1)) == WHITE


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([*BLUE, *RED] + [0] * (768 - 6))
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "opaque.png")
    palette.save(tmp_path / "keyed.gif", transparency=0)

    opaque = load_rgb(tmp_path / "opaque.png")
    assert opaque.getpixel((0, 0)) == BLUE and opaque.getpixel((2, 2)) == RED
    keyed = load_rgb(tmp_path / "keyed.gif")
    assert keyed.mode == "RGB"
    assert keyed.getpixel((0, 0)) == WHITE and keyed.getpixel((2, 2)) == RED


@pytest.mark.parametrize(("mode", "suffix"), [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif")])
def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path, mode: str, suffix: str) -> None:
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    values = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=dtype)
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(values.astype(np.uint16) if mode != "I" else values.astype(np.int32)).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode in (mode, "I;16", "I")  # what Pillow gives back for this format
    image = load_rgb(path)
    assert image.mode == "RGB"
    # Clipping would turn every value above 255 into white; scaling keeps the ramp.
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 64, 128, 255]


def test_a_dark_sixteen_bit_image_stays_dark(tmp_path: Path) -> None:
    """A 16-bit file (its depth known from the mode) whose values all happen to be <= 255 is still 16-bit."""
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint16)).save(tmp_path / "dark.png")
    with Image.open(tmp_path / "dark.png") as reopened:
        assert reopened.mode == "I;16"
    assert [load_rgb(tmp_path / "dark.png").getpixel((x, 0))[0] for x in range(3)] == [0, 0, 1]


def test_32_bit_integers_holding_8_bit_values_stay_8_bit(tmp_path: Path) -> None:
    """Mode I (32-bit integers) does not say its bit depth: values that all fit 0-255 are an 8-bit
    picture saved wide (not a black 16-bit one); wider ones are scaled as 16-bit."""
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32)).save(tmp_path / "wide8.tif")
    with Image.open(tmp_path / "wide8.tif") as reopened:
        assert reopened.mode == "I"
    assert [load_rgb(tmp_path / "wide8.tif").getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (100,) * 3, (255,) * 3]
    Image.fromarray(np.array([[0, 100, 257]], dtype=np.int32)).save(tmp_path / "wide16.tif")
    assert [load_rgb(tmp_path / "wide16.tif").getpixel((x, 0))[0] for x in range(3)] == [0, 0, 1]


def test_float_images(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert [load_rgb(tmp_path / "unit.tif").getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (128,) * 3, (255,) * 3]

    wide = np.array([[-10.0, 0.0, 10.0, np.nan]], dtype=np.float32)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    assert [load_rgb(tmp_path / "wide.tif").getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 128]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° clockwise turn
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = load_rgb(tmp_path / "rotated.jpg")
    assert upright.size == (20, 40)
    # Clockwise: the stored left (blue) half becomes the top half.
    assert upright.getpixel((10, 5))[2] > 200 and upright.getpixel((10, 35))[0] > 200


def test_draft_decodes_jpeg_smaller_but_not_below_the_size(tmp_path: Path) -> None:
    path = noise_jpeg(tmp_path / "big.jpg", size=(512, 384))
    assert load_rgb(path).size == (512, 384)
    drafted = load_rgb(path, draft_size=64)
    assert drafted.mode == "RGB"
    assert drafted.size == (128, 96)  # 1/4 scale: 1/8 would make the height 48 < 64
    Image.new("RGB", (512, 384)).save(tmp_path / "big.png")
    assert load_rgb(tmp_path / "big.png", draft_size=64).size == (512, 384)  # only JPEG drafts


def test_bad_files_raise_bad_image_error(tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    data = noise_jpeg(tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])

    cases = {
        "text.jpg": "not a recognised image format",
        "empty.png": "empty file",
        "truncated.jpg": "truncated",
        "missing.jpg": "cannot read file",
    }
    for name, reason in cases.items():
        for draft_size in (None, 16):
            with pytest.raises(BadImageError, match=reason) as info:
                load_rgb(tmp_path / name, draft_size=draft_size)
            assert info.value.path == str(tmp_path / name)
            assert str(tmp_path / name) in str(info.value)
            assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_an_image_without_pixels_is_a_bad_image(mode: str) -> None:
    """An empty crop (0 pixels wide or high) used to reach the resize and die there with ZeroDivisionError."""
    photo = Image.new(mode, (40, 30))
    for empty in (photo.crop((10, 10, 10, 20)), Image.new(mode, (5, 0))):
        with pytest.raises(BadImageError, match=r"<crop>: empty image \(\d+ x \d+ pixels\)"):
            pil_to_rgb(empty, name="<crop>")
        with pytest.raises(BadImageError, match="empty image"):
            to_rgb(empty)


def test_a_very_large_image_is_one_line_of_ours_then_refused_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Pillow warns past MAX_IMAGE_PIXELS and refuses past twice that: lowered here instead of a 90 MP file."""
    path = noise_jpeg(tmp_path / "panorama.jpg", size=(40, 30))  # 1,200 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would raise here
        assert load_rgb(path).size == (40, 30)
        assert load_rgb(path).size == (40, 30)
    assert [record.getMessage() for record in caplog.records] == [  # once per file
        f"{path}: a very large image (40 x 30 = 1,200 pixels, more than Pillow's decompression-bomb warning size "
        "of 1,000); decoding it anyway"
    ]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(BadImageError) as error:
        load_rgb(path)
    assert error.value.reason == (
        "refused: more than 1,000 pixels, Pillow's decompression-bomb limit (2 x PIL.Image.MAX_IMAGE_PIXELS)"
    )
