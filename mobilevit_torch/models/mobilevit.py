"""The MobileViT network and its registered variants (arXiv 2110.02178)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mobilevit_torch.blocks import InvertedResidual, MobileViTBlock
from mobilevit_torch.checks import check_count
from mobilevit_torch.layers import ConvNormAct
from mobilevit_torch.models.features import FeatureInfo, MobileViTFeatures, feature_indices, run_stages
from mobilevit_torch.models.variants import VARIANTS, MobileViTConfig
from mobilevit_torch.preprocessing import Preprocessing
from mobilevit_torch.registry import register_model


class MobileViT(nn.Module):
    """MobileViT image classifier (Mehta & Rastegari, arXiv 2110.02178, Table 4).

    3x3 stride-2 stem, five stages of MV2 blocks (stages 3-5 end in a MobileViT block), a 1x1
    expansion, global average pooling, dropout and a linear classifier. ``forward`` returns logits.

    ``drop_path_rate`` is timm's stochastic depth: the rate rises linearly from 0 at the first block
    to ``drop_path_rate`` at the last (MV2 and MobileViT blocks counted alike, in order), and applies
    to the residual branch of every MV2 block that has one and to both residual branches of every
    transformer layer in a MobileViT block (timm also drops the whole output of the down-sampling MV2
    blocks, which have no shortcut; see ``InvertedResidual``).
    """

    def __init__(
        self,
        config: MobileViTConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.1,
        dropout: float | None = None,
        attn_drop: float = 0.0,
        ffn_drop: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        # Checked here, by name: torch would fail later, deep inside nn.Linear/nn.Dropout, or (attention
        # dropout) only at the first training step.
        num_classes = check_count("num_classes", num_classes, minimum=0)
        in_chans = check_count("in_chans", in_chans, minimum=1)
        rates = {"drop_rate": drop_rate, "dropout": dropout, "attn_drop": attn_drop, "ffn_drop": ffn_drop}
        for name, rate in rates.items():
            if rate is not None:  # dropout=None: the variant's own
                _check_rate(name, rate)
        # A rate of 1 would drop every branch and divide the kept ones by 0.
        _check_rate("drop_path_rate", drop_path_rate, kind="drop-path (stochastic depth)", below_one=True)
        self.config = config
        self.num_classes = num_classes
        self.preprocessing = Preprocessing()
        self.class_names: list[str] | None = None
        transformer_dropout = config.dropout if dropout is None else dropout

        self.stem = ConvNormAct(in_chans, config.stem_chs, kernel_size=3, stride=2)
        stages: list[nn.Module] = []
        self.feature_info = FeatureInfo()
        in_chs, reduction = config.stem_chs, 2
        # One rate per block, MV2 and MobileViT blocks alike, linear from 0 to drop_path_rate (timm's
        # schedule, float32 linspace included, so both models drop with the same probabilities).
        num_blocks = sum(spec.depth + spec.has_transformer for spec in config.stages)
        block_rates = iter(torch.linspace(0, drop_path_rate, num_blocks).tolist())
        for index, spec in enumerate(config.stages):
            blocks: list[nn.Module] = []
            for depth_index in range(spec.depth):
                stride = spec.stride if depth_index == 0 else 1
                blocks.append(
                    InvertedResidual(
                        in_chs,
                        spec.out_chs,
                        stride=stride,
                        expand_ratio=config.expand_ratio,
                        drop_path=next(block_rates),
                    )
                )
                in_chs = spec.out_chs
            if spec.has_transformer:
                assert spec.transformer_dim is not None and spec.ffn_dim is not None
                blocks.append(
                    MobileViTBlock(
                        spec.out_chs,
                        transformer_dim=spec.transformer_dim,
                        ffn_dim=spec.ffn_dim,
                        num_layers=spec.num_layers,
                        num_heads=config.num_heads,
                        patch_size=config.patch_size,
                        dropout=transformer_dropout,
                        attn_drop=attn_drop,
                        ffn_drop=ffn_drop,
                        drop_path=next(block_rates),
                    )
                )
            stages.append(nn.Sequential(*blocks))
            reduction *= spec.stride
            self.feature_info.append({"num_chs": spec.out_chs, "reduction": reduction, "module": f"stages.{index}"})
        self.stages = nn.Sequential(*stages)
        self.final_conv = ConvNormAct(in_chs, config.final_chs, kernel_size=1)
        self.num_features = config.final_chs
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(config.final_chs, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.apply(_init_weights)

    def get_classifier(self) -> nn.Module:
        """The final ``nn.Linear`` (``nn.Identity`` when the model has ``num_classes=0``), as timm names it."""
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` (0: features only).

        ``global_pool`` is accepted for timm's signature: ``None`` or ``"avg"`` (the paper's global average
        pooling, the only one this model has)."""
        if global_pool not in (None, "avg"):
            raise ValueError(
                f"global_pool={global_pool!r} is not available: MobileViT pools by global average ('avg'); "
                f"for the unpooled map use forward_features(x)"
            )
        num_classes = check_count("num_classes", num_classes, minimum=0)
        self.num_classes = num_classes
        if "num_classes" in getattr(self, "model_args", {}):  # set by create_model; checkpoints rebuild from it
            self.model_args["num_classes"] = num_classes
        self.class_names = None
        device = self.final_conv.conv.weight.device
        self.classifier = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        self.classifier.apply(_init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of keeping them (timm's name).

        Training then holds only the stage outputs, at the cost of a second forward through every stage
        during the backward. Gradients are unchanged; BatchNorm's running statistics see each batch twice
        (the recomputation runs in training mode too), as in timm. No effect with autograd off."""
        self.grad_checkpointing = bool(enable)

    def as_backbone(self, out_indices: Sequence[int] | None = None) -> MobileViTFeatures:
        """This network without its head, returning the feature maps of the stages ``out_indices``
        (default: all five; see ``feature_info``) as a list: what ``create_model(..., features_only=True)``
        returns. It shares this model's modules and weights."""
        return MobileViTFeatures(self, out_indices)

    def forward_intermediates(self, x: Tensor, indices: Sequence[int] | None = None) -> list[Tensor]:
        """Stage outputs at strides 2, 4, 8, 16 and 32 (``feature_info``), for detection/segmentation
        heads; ``indices`` picks some of them (0-4, negative from the end) and stops after the last one."""
        levels = feature_indices(indices, len(self.stages))
        return run_stages(self.stem, self.stages, x, levels, checkpointing=self.grad_checkpointing)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map after the 1x1 expansion: ``[B, final_chs, H/32, W/32]``."""
        (x,) = run_stages(self.stem, self.stages, x, (len(self.stages) - 1,), checkpointing=self.grad_checkpointing)
        return self.final_conv(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, dropout and classify a :meth:`forward_features` map; ``pre_logits=True`` stops before the
        classifier and returns the pooled ``[B, num_features]`` features (timm's ``forward_head``)."""
        # [B, C, h, w] -> [B, C, 1, 1] -> [B, C]
        x = self.head_drop(self.pool(x).flatten(1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _check_rate(name: str, value: Any, *, kind: str = "dropout", below_one: bool = False) -> None:
    interval = "[0, 1)" if below_one else "[0, 1]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in {interval}, got {type(value).__name__} {value!r}")
    if not (0.0 <= value < 1.0 if below_one else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} is a {kind} probability and must be in {interval}, got {value}")


def _init_weights(module: nn.Module) -> None:
    # ml-cvnets' initialisation: He (fan-out) for convolutions, truncated normal for linear layers.
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# One-line builders: arguments are MobileViT's keyword-only arguments, so a typo raises TypeError.
@register_model
def mobilevit_xxs(**kwargs: Any) -> MobileViT:
    """MobileViT-XXS, 1.27 M parameters (arXiv 2110.02178, Table 4)."""
    return MobileViT(VARIANTS["xxs"], **kwargs)


@register_model
def mobilevit_xs(**kwargs: Any) -> MobileViT:
    """MobileViT-XS, 2.32 M parameters (arXiv 2110.02178, Table 4)."""
    return MobileViT(VARIANTS["xs"], **kwargs)


@register_model
def mobilevit_s(**kwargs: Any) -> MobileViT:
    """MobileViT-S, 5.58 M parameters (arXiv 2110.02178, Table 4)."""
    return MobileViT(VARIANTS["s"], **kwargs)
