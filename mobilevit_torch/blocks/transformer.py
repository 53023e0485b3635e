"""Pre-norm transformer encoder layer used inside the MobileViT block."""

from __future__ import annotations

from torch import Tensor, nn

from mobilevit_torch.layers import DropPath, LayerNorm, Mlp, MultiHeadAttention


class TransformerEncoderLayer(nn.Module):
    """LayerNorm -> multi-head attention -> residual, LayerNorm -> MLP (SiLU) -> residual.

    The pre-norm layer of arXiv 2110.02178, Section 3.1 (``global_rep`` in ml-cvnets). Input and
    output are ``[B*P, N, d]``: one sequence of N patches for each of the P pixel positions.
    ``drop_path`` drops both residual branches per sequence in training (stochastic depth, as timm's
    ``TransformerBlock`` does); 0 leaves them as they are.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        ffn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads=num_heads, attn_drop=attn_drop, proj_drop=dropout)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_dim=ffn_dim, ffn_drop=ffn_drop, proj_drop=dropout)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
