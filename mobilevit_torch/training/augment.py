"""Batched augmentation on the device: crops and flips of a whole batch in one grid_sample.

Images come from the decoded-image cache as ``uint8 [B, 3, S, S]``. A crop box plus a horizontal
flip is an affine map of the output grid into the source image, so a whole batch of
RandomResizedCrop (or Keras-style random crop) + flip costs one ``affine_grid`` and one
``grid_sample`` kernel instead of B per-image PIL operations on the CPU.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mobilevit_torch.preprocessing import Preprocessing


def random_resized_crop_boxes(
    batch: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """``[B, 4]`` boxes ``(cx, cy, half_w, half_h)`` in normalised [-1, 1] coordinates of a square image.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio) as in RandomResizedCrop; boxes wider
    or taller than the image are clipped to it.
    """
    area = torch.empty(batch).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(batch).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    half_w = torch.sqrt(area * aspect).clamp(max=1.0)
    half_h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - half_w)
    cy = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - half_h)
    return torch.stack([cx, cy, half_w, half_h], dim=1)


def random_crop_boxes(batch: int, *, source_size: int, crop_size: int, generator: torch.Generator) -> Tensor:
    """Boxes for a fixed-size random crop at whole-pixel offsets (Keras ``RandomCrop``)."""
    offsets = torch.randint(0, source_size - crop_size + 1, (batch, 2), generator=generator).float()
    half = crop_size / source_size
    # Pixel offset k puts the crop's centre at -1 + (2k + crop) / source in normalised coordinates.
    centres = -1 + (2 * offsets + crop_size) / source_size
    return torch.cat([centres, torch.full((batch, 2), half)], dim=1)


def crop_and_flip(
    images: Tensor,
    boxes: Tensor,
    flips: Tensor,
    *,
    out_size: int,
    pre: Preprocessing,
) -> Tensor:
    """Sample each box of ``images`` (uint8 ``[B, 3, S, S]``) to ``out_size``, flipping where ``flips``.

    Returns float ``[B, 3, out, out]`` scaled to [0, 1], normalised and in the model's channel order.
    """
    batch = images.shape[0]
    boxes, flips = boxes.to(images.device), flips.to(images.device)
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = boxes[:, 2] * torch.where(flips, -1.0, 1.0)
    theta[:, 1, 1] = boxes[:, 3]
    theta[:, 0, 2] = boxes[:, 0]
    theta[:, 1, 2] = boxes[:, 1]
    grid = F.affine_grid(theta, [batch, 3, out_size, out_size], align_corners=False)
    x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return normalize(x, pre)


def center_crop(images: Tensor, size: int, pre: Preprocessing) -> Tensor:
    """Centre ``size x size`` crop of uint8 ``[B, 3, S, S]`` images, scaled and normalised."""
    offset = (images.shape[-1] - size) // 2
    return normalize(images[:, :, offset : offset + size, offset : offset + size].float(), pre)


def normalize(x: Tensor, pre: Preprocessing) -> Tensor:
    """Float pixels in [0, 255] (RGB) -> [0, 1], mean/std, then the model's channel order."""
    x = x / 255.0
    if pre.mean != (0.0, 0.0, 0.0) or pre.std != (1.0, 1.0, 1.0):
        x = (x - _constant(pre.mean, x.device)) / _constant(pre.std, x.device)
    return x.flip(1) if pre.channel_order == "BGR" else x


@functools.cache
def _constant(values: tuple[float, ...], device: torch.device) -> Tensor:
    """``[1, 3, 1, 1]`` per-channel constant, made once per device: a host-to-device copy cannot
    happen while a CUDA graph is being captured, so the first (uncaptured) step makes it."""
    return torch.tensor(values, device=device).view(1, 3, 1, 1)
