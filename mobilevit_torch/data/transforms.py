"""Per-image transforms built from a model's :class:`~mobilevit_torch.Preprocessing`."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from mobilevit_torch.preprocessing import Preprocessing

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class ToChannelOrder(nn.Module):
    """Reorder a ``[..., 3, H, W]`` RGB tensor into the channel order the model expects."""

    def __init__(self, channel_order: str) -> None:
        super().__init__()
        self.flip = channel_order == "BGR"

    def forward(self, x: Tensor) -> Tensor:
        return x.flip(-3) if self.flip else x


def interpolation_mode(name: str) -> InterpolationMode:
    return _INTERPOLATION[name]


def to_model_input(pre: Preprocessing) -> T.Compose:
    """uint8 RGB image (PIL or tensor) -> float tensor scaled to [0, 1], normalised, channel-ordered."""
    return T.Compose(
        [
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=list(pre.mean), std=list(pre.std)),
            ToChannelOrder(pre.channel_order),
        ]
    )


def eval_transform(pre: Preprocessing) -> T.Compose:
    """Resize the shorter side to ``pre.resize_size``, centre-crop ``pre.input_size``, then scale."""
    return T.Compose(
        [
            T.Resize(pre.resize_size, interpolation=interpolation_mode(pre.interpolation), antialias=True),
            T.CenterCrop(pre.input_size),
            to_model_input(pre),
        ]
    )

