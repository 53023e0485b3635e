"""Pre-norm transformer encoder layer used inside the MobileViT block."""

from __future__ import annotations

from torch import Tensor, nn

from mobilevit_torch.layers import Mlp, MultiHeadAttention


class TransformerEncoderLayer(nn.Module):
    """LayerNorm -> multi-head attention -> residual, LayerNorm -> MLP (SiLU) -> residual.

    The pre-norm layer of arXiv 2110.02178, Section 3.1 (``global_rep`` in ml-cvnets). Input and
    output are ``[B*P, N, d]``: one sequence of N patches for each of the P pixel positions.
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
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads=num_heads, attn_drop=attn_drop, proj_drop=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_dim=ffn_dim, ffn_drop=ffn_drop, proj_drop=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
