"""Stochastic depth: drop a residual branch for whole samples during training."""

from __future__ import annotations

from torch import Tensor, nn


class DropPath(nn.Module):
    """Zero the residual branch ``x`` of a random ``rate`` share of the samples in a training batch.

    Stochastic depth (Huang et al., arXiv 1603.09382), per sample as in timm's ``DropPath``: the
    kept samples are scaled by ``1 / (1 - rate)`` so the branch's expected value is unchanged, and
    evaluation returns ``x`` as it is. Only for a branch that is added to a shortcut: dropping a
    block's whole output would erase the sample.
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        # One draw per sample, broadcast over the rest: [B, ...] -> [B, 1, ..., 1]
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"
