"""MobileNetV2 inverted residual block (MV2)."""

from __future__ import annotations

from torch import Tensor, nn

from mobilevit_torch.blocks.mv2_kernel import mv2_forward, mv2_kernel_applies
from mobilevit_torch.layers import ConvNormAct, DropPath


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going below 90% of it.

    The references compute the hidden width of MV2 blocks this way (MobileNetV2's rule).
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """MV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match.

    MobileViT uses these for its local, down-sampling stages (arXiv 2110.02178, Fig. 1b and
    Table 4); the expansion ratio is 2 for XXS and 4 for XS and S. ``drop_path`` (stochastic depth)
    drops the branch per sample in training, in blocks that have a residual only.
    """

    mv2_kernel = False  # folded inference models on a GPU: the whole block as one Triton kernel (set_mv2_kernel)

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        stride: int,
        expand_ratio: float,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_chs = make_divisible(in_chs * expand_ratio)
        self.use_residual = stride == 1 and in_chs == out_chs
        self.expand = ConvNormAct(in_chs, hidden_chs, kernel_size=1)
        self.depthwise = ConvNormAct(hidden_chs, hidden_chs, kernel_size=3, stride=stride, groups=hidden_chs)
        self.project = ConvNormAct(hidden_chs, out_chs, kernel_size=1, apply_act=False)
        # timm also drops blocks without a residual (a down-sampling MV2 block's whole output, i.e. the
        # sample's every feature); only a branch with a shortcut beside it is dropped here.
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.use_residual else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.mv2_kernel and mv2_kernel_applies(x, self):
            return mv2_forward(x, self)
        out = self.project(self.depthwise(self.expand(x)))
        if not self.use_residual:
            return out
        # In place: ``out`` is a fresh tensor that no backward needs (BatchNorm, convolution and the
        # drop-path product save their inputs, not outputs), so this skips allocating a third full-size map.
        return self.drop_path(out).add_(x)
