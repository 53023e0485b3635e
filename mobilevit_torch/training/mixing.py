"""Label-smoothed targets, mixup and cutmix, written so a whole training step can be one CUDA graph.

timm's ``Mixup`` draws its lambda and box on the host and bakes them into the kernels as Python
numbers, and cutmix slices the batch at those numbers: replayed as a CUDA graph, every step would
mix with the first step's draw. Here the host draws one row of numbers per step for a whole epoch
(a pure function of ``(seed, epoch)``, so a resumed run replays the same draws), the row travels as
a device tensor, and the device turns it into a per-pixel weight map. Mixup and cutmix are then one
formula: ``x = keep * x + (1 - keep) * x.flip(0)`` with ``keep`` constant (mixup) or 0 inside the
box and 1 outside (cutmix), and the targets mix with ``keep``'s mean, which is timm's
``correct_lam`` for cutmix. Each image pairs with its mirror in the batch (``flip(0)``), as in timm;
an odd batch just mixes its middle image with itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# One row per step: lam (mixup weight), cut (1: cutmix), and the cutmix box in [0, 1] coordinates.
PARAMS = ("lam", "cut", "y0", "y1", "x0", "x1")


def smoothed_targets(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """``[B]`` class indices -> ``[B, K]`` targets: ``1 - smoothing + smoothing / K`` on the class."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)  # [B, K]
    return targets.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``-sum(targets * log_softmax(logits))``."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


class Mixer:
    """Mixup (``alpha > 0``) and/or cutmix (``cutmix_alpha > 0``); with both, each step picks one at 50 %."""

    def __init__(self, alpha: float, cutmix_alpha: float, seed: int) -> None:
        if alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("Mixer needs mixup or cutmix (alpha > 0 or cutmix_alpha > 0)")
        self.alpha, self.cutmix_alpha, self.seed = alpha, cutmix_alpha, seed

    def epoch_params(self, epoch: int, steps: int) -> Tensor:
        """``[steps, 6]`` float32 rows of :data:`PARAMS`, the same for any process count or resume."""
        rng = np.random.default_rng([self.seed, epoch, 0x6D6978])
        rows = np.zeros((steps, len(PARAMS)), np.float32)
        for row in rows:
            cut = self.cutmix_alpha > 0 and (self.alpha <= 0 or rng.random() < 0.5)
            if not cut:
                row[0] = rng.beta(self.alpha, self.alpha)
                continue
            lam = rng.beta(self.cutmix_alpha, self.cutmix_alpha)
            side = np.sqrt(1.0 - lam)  # the box covers about 1 - lam of the image
            cy, cx = rng.random(2)
            row[1:] = 1.0, *np.clip([cy - side / 2, cy + side / 2, cx - side / 2, cx + side / 2], 0.0, 1.0)
        return torch.from_numpy(rows)

    @staticmethod
    def apply(x: Tensor, targets: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Mix ``x [B, C, H, W]`` and ``targets [B, K]`` by one row of :meth:`epoch_params` (on x's device)."""
        lam, cut, y0, y1, x0, x1 = params.unbind()
        height, width = x.shape[-2:]
        rows = (torch.arange(height, device=x.device) + 0.5) / height  # pixel centres, [H]
        cols = (torch.arange(width, device=x.device) + 0.5) / width  # [W]
        inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]  # [H, W]
        keep = torch.where(cut > 0, (~inside).to(x.dtype), lam.to(x.dtype))  # weight of each image's own pixel
        mixed = x * keep + x.flip(0) * (1 - keep)
        weight = keep.float().mean()
        return mixed, targets * weight + targets.flip(0) * (1 - weight)
