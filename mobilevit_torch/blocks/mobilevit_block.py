"""The MobileViT block: local convolutions, a transformer across patches, fold back, fuse."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobilevit_torch.blocks.transformer import TransformerEncoderLayer
from mobilevit_torch.layers import ConvNormAct, LayerNorm
from mobilevit_torch.layers.conv_kernel import conv3x3_forward, conv_kernel_applies


def unfold_patches(x: Tensor, patch_h: int, patch_w: int) -> Tensor:
    """Split a feature map into non-overlapping ``patch_h x patch_w`` patches (Fig. 1b, "Unfold").

    Returns one sequence per pixel position inside a patch: element ``[b*P + p, n, c]`` is pixel
    ``p = i*patch_w + j`` (row ``i``, column ``j`` within the patch) of patch ``n`` (patches in
    row-major order) of image ``b``. ``H`` and ``W`` must be multiples of the patch size.
    """
    batch, chs, height, width = x.shape
    rows, cols = height // patch_h, width // patch_w
    # [B, C, H, W] -> [B, C, rows, patch_h, cols, patch_w]
    x = x.reshape(batch, chs, rows, patch_h, cols, patch_w)
    # [B, C, rows, patch_h, cols, patch_w] -> [B, patch_h, patch_w, rows, cols, C]
    x = x.permute(0, 3, 5, 2, 4, 1)
    # [B, patch_h, patch_w, rows, cols, C] -> [B*P, N, C]
    return x.reshape(batch * patch_h * patch_w, rows * cols, chs)


def fold_patches(
    x: Tensor,
    batch: int,
    height: int,
    width: int,
    patch_h: int,
    patch_w: int,
    *,
    channels_last: bool = False,
) -> Tensor:
    """Inverse of :func:`unfold_patches` (Fig. 1b, "Fold"): ``[B*P, N, C] -> [B, C, H, W]``.

    With ``channels_last`` the one copy writes channels-last memory, so a channels-last network
    does not pay a second copy to convert the folded map back.
    """
    chs = x.shape[-1]
    rows, cols = height // patch_h, width // patch_w
    # [B*P, N, C] -> [B, patch_h, patch_w, rows, cols, C]
    x = x.reshape(batch, patch_h, patch_w, rows, cols, chs)
    if channels_last:
        # [B, patch_h, patch_w, rows, cols, C] -> [B, rows, patch_h, cols, patch_w, C] -> [B, H, W, C]
        x = x.permute(0, 3, 1, 4, 2, 5).reshape(batch, height, width, chs)
        # [B, H, W, C] -> [B, C, H, W], a view with channels-last strides
        return x.permute(0, 3, 1, 2)
    # [B, patch_h, patch_w, rows, cols, C] -> [B, C, rows, patch_h, cols, patch_w]
    x = x.permute(0, 5, 3, 1, 4, 2)
    # [B, C, rows, patch_h, cols, patch_w] -> [B, C, H, W]
    return x.reshape(batch, chs, height, width)


class MobileViTBlock(nn.Module):
    """MobileViT block (arXiv 2110.02178, Section 3.1, Fig. 1b).

    Local representation: 3x3 conv-BN-SiLU, then a 1x1 convolution to the transformer width ``d``
    (no norm, no activation). Global representation: unfold into ``patch_size x patch_size``
    patches, ``num_layers`` transformer layers across patches, LayerNorm, fold back. Fusion: 1x1
    conv-BN-SiLU back to ``C``, concatenate with the block input, 3x3 conv-BN-SiLU.

    ``drop_path`` is every transformer layer's stochastic-depth rate (timm's ``drop_path_rate``).

    When the feature map is not a multiple of the patch size it is resized (bilinear) up to the
    next multiple before unfolding and back after folding, as ml-cvnets, timm and transformers do.
    """

    def __init__(
        self,
        chs: int,
        *,
        transformer_dim: int,
        ffn_dim: int,
        num_layers: int,
        num_heads: int,
        patch_size: int,
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        ffn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_h = self.patch_w = patch_size
        self.conv_local = ConvNormAct(chs, chs, kernel_size=3)
        self.conv_in = nn.Conv2d(chs, transformer_dim, kernel_size=1, bias=False)
        self.transformer = nn.Sequential(
            *[
                TransformerEncoderLayer(
                    transformer_dim,
                    num_heads=num_heads,
                    ffn_dim=ffn_dim,
                    dropout=dropout,
                    attn_drop=attn_drop,
                    ffn_drop=ffn_drop,
                    drop_path=drop_path,
                )
                for _ in range(num_layers)
            ]
        )
        self.norm = LayerNorm(transformer_dim)
        self.conv_out = ConvNormAct(transformer_dim, chs, kernel_size=1)
        self.conv_fusion = ConvNormAct(2 * chs, chs, kernel_size=3)
        self.conv_fusion.input_splits = (chs, chs)  # [block input, transformer output]: the kernel reads both

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        y = self.conv_local(x)
        batch, _, height, width = y.shape
        if height % self.patch_h or width % self.patch_w:
            return self._fuse(shortcut, self._global_resized(y))

        # conv_in and conv_out are 1x1 (pointwise) and BatchNorm/SiLU per channel, so they commute with
        # unfold/fold: both permutation copies move the C-channel map instead of the wider d-channel
        # one, and the projections run as plain matmuls on the tokens. Same weights, same results.
        channels_last = y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        patches = unfold_patches(y, self.patch_h, self.patch_w)  # [B*P, N, C]
        # conv_in's weight [d, C, 1, 1] -> [d, C]: [B*P, N, C] -> [B*P, N, d]
        patches = F.linear(patches, self.conv_in.weight.flatten(1), self.conv_in.bias)
        patches = self.norm(self.transformer(patches))
        # conv_out's weight [C, d, 1, 1] -> [C, d]: [B*P, N, d] -> [B*P, N, C]
        conv_out = self.conv_out
        patches = F.linear(patches, conv_out.conv.weight.flatten(1), conv_out.conv.bias)
        y = fold_patches(patches, batch, height, width, self.patch_h, self.patch_w, channels_last=channels_last)
        y = conv_out.norm_act(y)  # [B, C, H, W]
        return self._fuse(shortcut, y)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """As ``nn.Module._apply`` (``.to()``, ``.cuda()``, ...), then conv_in's and conv_out's weights
        back in the standard layout: ``forward`` uses them as ``[d, C]`` matrices, so their gradients
        come back with those strides. ``.to(memory_format=torch.channels_last)`` would give the
        ``[d, C, 1, 1]`` weights other strides for the size-1 dims, which DDP's gradient buckets (laid
        out like the parameters) do not accept without a copy and a warning."""
        super()._apply(fn, recurse)
        for weight in (self.conv_in.weight, self.conv_out.conv.weight):
            _, in_channels, kh, kw = weight.shape  # [d, C, 1, 1] (or [C, d, 1, 1])
            if weight.stride() != (in_channels * kh * kw, kh * kw, kw, 1):
                weight.data = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device).copy_(weight.data)
        return self

    def _fuse(self, shortcut: Tensor, y: Tensor) -> Tensor:
        """Fig. 1b's fusion: the 3x3 convolution over the block input concatenated with ``y``. The
        inference kernel (``set_conv_kernels``) reads the two maps where they are instead."""
        fusion = self.conv_fusion
        if fusion.conv_kernel and conv_kernel_applies(shortcut, fusion):
            return conv3x3_forward(fusion, shortcut, y)
        return fusion(torch.cat((shortcut, y), dim=1))

    def _global_resized(self, y: Tensor) -> Tensor:
        """The reference path for maps that are not whole patches: resize up, unfold, transform, fold, resize back."""
        batch, _, height, width = y.shape
        y = self.conv_in(y)
        # Round up to whole patches; shapes are static per input size, so this traces/exports cleanly.
        new_h = -(-height // self.patch_h) * self.patch_h
        new_w = -(-width // self.patch_w) * self.patch_w
        y = F.interpolate(y, size=(new_h, new_w), mode="bilinear", align_corners=False)
        patches = unfold_patches(y, self.patch_h, self.patch_w)  # [B*P, N, d]
        patches = self.norm(self.transformer(patches))
        y = fold_patches(patches, batch, new_h, new_w, self.patch_h, self.patch_w)  # [B, d, H', W']
        y = F.interpolate(y, size=(height, width), mode="bilinear", align_corners=False)
        return self.conv_out(y)
