"""Tier 1: the smallest building blocks (convolution unit, attention, feed-forward, stochastic depth)."""

from mobilevit_torch.layers.attention import MultiHeadAttention
from mobilevit_torch.layers.conv_norm_act import ConvNormAct
from mobilevit_torch.layers.drop_path import DropPath
from mobilevit_torch.layers.layer_norm import LayerNorm
from mobilevit_torch.layers.mlp import Mlp

__all__ = ["ConvNormAct", "DropPath", "LayerNorm", "Mlp", "MultiHeadAttention"]
