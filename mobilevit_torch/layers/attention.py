"""Multi-head self-attention over the patches of one pixel position."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with a fused query/key/value projection.

    The fused ``qkv`` weight stacks the query, key and value projections in that order, which is
    the layout of Apple's ml-cvnets (``qkv_proj``) and timm (``attn.qkv``). Attention itself runs
    through ``F.scaled_dot_product_attention`` so PyTorch picks the fused kernel.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        # [B, N, 3*d] -> [B, N, 3, heads, d/heads] -> [3, B, heads, N, d/heads]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        # [B, heads, N, d/heads] -> [B, N, heads, d/heads] -> [B, N, d]
        x = x.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))
