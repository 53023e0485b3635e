"""Convolution -> BatchNorm -> SiLU, the basic unit of every MobileViT convolution."""

from __future__ import annotations

from torch import Tensor, nn


class ConvNormAct(nn.Module):
    """A bias-free convolution followed by BatchNorm and (optionally) SiLU.

    Every convolution in MobileViT (arXiv 2110.02178, Section 3 and Fig. 1b) except the 1x1
    projection into the transformer width uses this pattern. ``padding`` is ``kernel_size // 2``
    so stride 1 keeps the spatial size and stride 2 halves it (rounding up), as in the reference.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        apply_act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs,
            out_chs,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.SiLU() if apply_act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))
