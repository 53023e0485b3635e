"""Tier 2: MobileNetV2 block, transformer layer and the MobileViT block."""

from mobilevit_torch.blocks.inverted_residual import InvertedResidual, make_divisible
from mobilevit_torch.blocks.mobilevit_block import MobileViTBlock, fold_patches, unfold_patches
from mobilevit_torch.blocks.mv2_kernel import set_mv2_kernel
from mobilevit_torch.blocks.transformer import TransformerEncoderLayer

__all__ = [
    "InvertedResidual",
    "MobileViTBlock",
    "TransformerEncoderLayer",
    "fold_patches",
    "make_divisible",
    "set_mv2_kernel",
    "unfold_patches",
]
