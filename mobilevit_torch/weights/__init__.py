"""Pretrained weights: read any published MobileViT layout, convert, load strictly."""

from mobilevit_torch.weights.input_conv import adapt_input_conv
from mobilevit_torch.weights.layouts import UnknownLayoutError, convert_state_dict, detect_layout
from mobilevit_torch.weights.loading import (
    CHECKPOINT_FORMAT,
    PUBLISHED,
    LoadedWeights,
    WeightsError,
    load_into,
    read_pretrained,
    read_weights,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "PUBLISHED",
    "LoadedWeights",
    "UnknownLayoutError",
    "WeightsError",
    "adapt_input_conv",
    "convert_state_dict",
    "detect_layout",
    "load_into",
    "read_pretrained",
    "read_weights",
]
