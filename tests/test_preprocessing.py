"""Preprocessing: what travels with the weights is checked when it is made, not when an image meets it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mobilevit_torch import Preprocessing
from mobilevit_torch.data.transforms import eval_transform


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"input_size": "256"}, TypeError, "input_size must be an integer, got str '256'"),
        ({"input_size": 0}, ValueError, "input_size must be positive"),
        ({"std": (0.0, 1.0, 1.0)}, ValueError, r"std must be positive, got \(0.0, 1.0, 1.0\)"),
        ({"mean": (0.5,)}, ValueError, r"mean needs one value per channel \(3\), got \(0.5,\)"),
        ({"crop_pct": 0}, ValueError, r"crop_pct must be in \(0, 1\]"),
        ({"crop_pct": 1.2}, ValueError, r"crop_pct must be in \(0, 1\], got 1.2"),
        ({"channel_order": "bgr"}, ValueError, "channel_order must be 'RGB' or 'BGR'"),
    ],
)
def test_bad_fields_are_refused_by_name(fields: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Preprocessing(**fields)


@pytest.mark.parametrize(
    ("input_size", "crop_pct", "resize_size"),
    [(224, 0.875, 256), (256, 0.9, 284), (32, 0.9, 35), (256, 1.0, 256)],  # 32 / 0.9 = 35.6: floored, not rounded
)
def test_resize_size_is_floor_of_input_size_over_crop_pct(input_size: int, crop_pct: float, resize_size: int) -> None:
    """timm's rule: the shorter side is resized to floor(input_size / crop_pct) before the centre crop."""
    assert Preprocessing(input_size=input_size, crop_pct=crop_pct).resize_size == resize_size


def test_round_trip_through_a_dict() -> None:
    pre = Preprocessing(input_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order="BGR")
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def test_eval_transform_matches_a_hand_made_pipeline() -> None:
    """What evaluate.py, predict.py and the export's checks feed the model, against PIL and arithmetic written out:
    shorter side to resize_size (crop_pct), centre crop, [0, 1], (x - mean) / std, then RGB -> BGR."""
    pre = Preprocessing(
        input_size=16, crop_pct=0.8, interpolation="bilinear", channel_order="BGR",
        mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125),
    )  # fmt: skip
    assert pre.resize_size == 20
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8))  # 40 wide, 30 high
    resized = np.asarray(image.resize((26, 20), Image.Resampling.BILINEAR), dtype=np.float32)  # [20, 26, 3]
    crop = resized[2:18, 5:21] / 255  # the central 16 x 16: rows (20 - 16) / 2, columns (26 - 16) / 2
    normalised = (crop - np.array(pre.mean, dtype=np.float32)) / np.array(pre.std, dtype=np.float32)
    expected = torch.from_numpy(normalised[..., ::-1].copy()).permute(2, 0, 1)  # BGR, [16, 16, 3] -> [3, 16, 16]
    torch.testing.assert_close(eval_transform(pre)(image), expected, atol=1e-5, rtol=0)
