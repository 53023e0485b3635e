"""The MobileViT variants: arXiv 2110.02178, Table 4 (and Apple's ml-cvnets configs), as one typed table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``depth`` MV2 blocks (the first strided), then optionally one MobileViT block."""

    out_chs: int
    depth: int
    stride: int
    transformer_dim: int | None = None
    ffn_dim: int | None = None
    num_layers: int = 0

    @property
    def has_transformer(self) -> bool:
        return self.transformer_dim is not None


@dataclass(frozen=True)
class MobileViTConfig:
    """A whole network: stem, five stages, final 1x1 expansion before pooling."""

    stem_chs: int
    expand_ratio: float
    stages: tuple[StageSpec, ...]
    final_chs: int
    num_heads: int = 4
    patch_size: int = 2
    dropout: float = 0.1  # transformer dropout (ml-cvnets "dropout")


VARIANTS: dict[str, MobileViTConfig] = {
    "xxs": MobileViTConfig(
        stem_chs=16,
        expand_ratio=2.0,
        stages=(
            #         out_chs depth stride  transformer_dim ffn_dim num_layers
            StageSpec(16, 1, 1),
            StageSpec(24, 3, 2),
            StageSpec(48, 1, 2, transformer_dim=64, ffn_dim=128, num_layers=2),
            StageSpec(64, 1, 2, transformer_dim=80, ffn_dim=160, num_layers=4),
            StageSpec(80, 1, 2, transformer_dim=96, ffn_dim=192, num_layers=3),
        ),
        final_chs=320,
        dropout=0.05,
    ),
    "xs": MobileViTConfig(
        stem_chs=16,
        expand_ratio=4.0,
        stages=(
            StageSpec(32, 1, 1),
            StageSpec(48, 3, 2),
            StageSpec(64, 1, 2, transformer_dim=96, ffn_dim=192, num_layers=2),
            StageSpec(80, 1, 2, transformer_dim=120, ffn_dim=240, num_layers=4),
            StageSpec(96, 1, 2, transformer_dim=144, ffn_dim=288, num_layers=3),
        ),
        final_chs=384,
    ),
    "s": MobileViTConfig(
        stem_chs=16,
        expand_ratio=4.0,
        stages=(
            StageSpec(32, 1, 1),
            StageSpec(64, 3, 2),
            StageSpec(96, 1, 2, transformer_dim=144, ffn_dim=288, num_layers=2),
            StageSpec(128, 1, 2, transformer_dim=192, ffn_dim=384, num_layers=4),
            StageSpec(160, 1, 2, transformer_dim=240, ffn_dim=480, num_layers=3),
        ),
        final_chs=640,
    ),
}
