"""How images must be prepared for a model: travels with the weights into data pipelines and exports."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

Interpolation = Literal["bilinear", "bicubic", "nearest"]
ChannelOrder = Literal["RGB", "BGR"]


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing: resize the shorter side, centre-crop, scale, normalise, order channels.

    ``resize_size = floor(input_size / crop_pct)`` (timm's rule). Pixels are scaled to [0, 1] and
    then normalised with ``mean``/``std``; MobileViT uses no normalisation (mean 0, std 1).
    ``channel_order`` is the order the network expects: Apple's ImageNet weights were trained on
    images read with OpenCV, i.e. BGR.
    """

    input_size: int = 256
    crop_pct: float = 0.9
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: ChannelOrder = "RGB"

    def __post_init__(self) -> None:
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int):
            raise TypeError(f"input_size must be an integer, got {type(self.input_size).__name__} {self.input_size!r}")
        if self.input_size <= 0:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3:
                raise ValueError(f"{name} needs one value per channel (3), got {values!r}")
        if not all(value > 0 for value in self.std):  # pixels are divided by std
            raise ValueError(f"std must be positive, got {self.std!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"unsupported interpolation {self.interpolation!r}")

    @property
    def resize_size(self) -> int:
        return math.floor(self.input_size / self.crop_pct)

    def with_input_size(self, input_size: int) -> Preprocessing:
        return replace(self, input_size=input_size)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["resize_size"] = self.resize_size
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        fields = {k: v for k, v in data.items() if k != "resize_size"}
        for key in ("mean", "std"):
            if key in fields:
                fields[key] = tuple(float(v) for v in fields[key])
        return cls(**fields)


# Apple's ml-cvnets evaluation: shorter side to 288, centre crop 256, bilinear, BGR.
APPLE_IMAGENET = Preprocessing(input_size=256, crop_pct=256 / 288, interpolation="bilinear", channel_order="BGR")
# timm's pretrained config for its copies of Apple's weights (crop 0.9, bicubic); the weights are
# Apple's, trained on BGR images, so the channel order is BGR although timm's config omits it.
TIMM_IMAGENET = Preprocessing(input_size=256, crop_pct=0.9, interpolation="bicubic", channel_order="BGR")
