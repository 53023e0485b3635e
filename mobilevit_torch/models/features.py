"""Backbone use: MobileViT's stage outputs for detection and segmentation heads (timm's ``features_only``)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from mobilevit_torch.models.mobilevit import MobileViT


class MobileViTFeatures(nn.Module):
    """A MobileViT's stem and stages up to the last of ``out_indices``; ``forward`` returns the outputs of
    the stages ``out_indices`` (0-4: strides 2, 4, 8, 16, 32) as a list of ``[B, C_i, H/s_i, W/s_i]`` maps.

    The levels are the stage outputs that transformers' and ml-cvnets' segmentation heads read (XXS:
    16, 24, 48, 64 and 80 channels). timm's ``features_only`` ends instead with the 1x1 expansion
    (``final_conv``, XXS 320 channels) at stride 32; levels 0-3 are the same maps. ``feature_info``
    lists channels and strides (``.channels()``, ``.reduction()``, as timm's). Parameter names are the
    full model's (``stem.*``, ``stages.N.*``): ``create_model(..., features_only=True, pretrained=...)``
    loads a whole model's weights (or a backbone's own) into it.
    """

    def __init__(self, model: MobileViT, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        levels = feature_indices(out_indices, len(model.stages))
        self.config = model.config
        if hasattr(model, "model_name"):  # set by create_model: names the network in weight-loading errors
            self.model_name = model.model_name
        self.preprocessing = model.preprocessing
        self.out_indices = levels
        self.feature_info = FeatureInfo(dict(model.feature_info[i]) for i in levels)
        self.stem = model.stem
        self.stages = nn.Sequential(*list(model.stages)[: levels[-1] + 1])  # later stages are never run
        self.grad_checkpointing = model.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """As :meth:`MobileViT.set_grad_checkpointing`."""
        self.grad_checkpointing = bool(enable)

    def forward(self, x: Tensor) -> list[Tensor]:
        return run_stages(self.stem, self.stages, x, self.out_indices, checkpointing=self.grad_checkpointing)


class FeatureInfo(list):
    """One ``{"num_chs", "reduction", "module"}`` dict per feature level, with timm's accessors."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        return [info["module"] for info in self]


def feature_indices(indices: Sequence[int] | None, count: int) -> tuple[int, ...]:
    """``indices`` (None: all ``count`` levels; negative ones from the end) as sorted, distinct levels."""
    if indices is None:
        return tuple(range(count))
    if not isinstance(indices, Iterable) or isinstance(indices, (str, bytes, Tensor)):
        raise TypeError(f"feature indices are a sequence of integers such as (1, 2, 3, 4), got {indices!r}")
    indices = tuple(indices)
    if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in indices):
        raise TypeError(f"feature indices are a sequence of integers such as (1, 2, 3, 4), got {indices!r}")
    levels = sorted({int(i) % count if -count <= i < count else int(i) for i in indices})
    if not levels or levels[0] < 0 or levels[-1] >= count:
        raise ValueError(f"feature indices must be in 0..{count - 1} (or -{count}..-1), got {tuple(indices)}")
    return tuple(levels)


def run_stages(
    stem: nn.Module, stages: nn.Sequential, x: Tensor, levels: tuple[int, ...], *, checkpointing: bool
) -> list[Tensor]:
    """The outputs of ``stages`` at ``levels`` (sorted), stopping after the last one; with ``checkpointing``
    and autograd on, each stage's activations are recomputed in the backward instead of kept."""
    # The recomputation replays the random draws (dropout, stochastic depth) of the first pass.
    recompute = checkpointing and torch.is_grad_enabled()
    features = []
    x = stem(x)
    for index, stage in enumerate(stages):
        x = checkpoint(stage, x, use_reentrant=False) if recompute else stage(x)
        if index in levels:
            features.append(x)
            if index == levels[-1]:
                break
    return features
