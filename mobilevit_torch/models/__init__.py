"""Tier 3: the MobileViT network, its variant table and registered builders."""

from mobilevit_torch.models.features import FeatureInfo, MobileViTFeatures
from mobilevit_torch.models.fuse import fuse_for_inference, is_fused, set_inference_kernels
from mobilevit_torch.models.mobilevit import MobileViT, mobilevit_s, mobilevit_xs, mobilevit_xxs
from mobilevit_torch.models.variants import VARIANTS, MobileViTConfig, StageSpec

__all__ = [
    "VARIANTS",
    "FeatureInfo",
    "MobileViT",
    "MobileViTConfig",
    "MobileViTFeatures",
    "StageSpec",
    "fuse_for_inference",
    "is_fused",
    "mobilevit_s",
    "mobilevit_xs",
    "mobilevit_xxs",
    "set_inference_kernels",
]
