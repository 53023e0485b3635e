"""Preprocessing: what travels with the weights is checked when it is made, not when an image meets it."""

from __future__ import annotations

import pytest

from mobilevit_torch import Preprocessing


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"input_size": "256"}, TypeError, "input_size must be an integer, got str '256'"),
        ({"input_size": 0}, ValueError, "input_size must be positive"),
        ({"std": (0.0, 1.0, 1.0)}, ValueError, r"std must be positive, got \(0.0, 1.0, 1.0\)"),
        ({"mean": (0.5,)}, ValueError, r"mean needs one value per channel \(3\), got \(0.5,\)"),
        ({"crop_pct": 0}, ValueError, r"crop_pct must be in \(0, 1\]"),
        ({"channel_order": "bgr"}, ValueError, "channel_order must be 'RGB' or 'BGR'"),
    ],
)
def test_bad_fields_are_refused_by_name(fields: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Preprocessing(**fields)


def test_round_trip_through_a_dict() -> None:
    pre = Preprocessing(input_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order="BGR")
    assert Preprocessing.from_dict(pre.to_dict()) == pre
