"""mobilevit-torch: a faithful, fast MobileViT (Mehta & Rastegari 2021, arXiv 2110.02178)."""

from mobilevit_torch.registry import UnknownModelError, create_model, list_models, register_model  # noqa: I001
from mobilevit_torch.models import VARIANTS, MobileViT, MobileViTConfig, StageSpec
from mobilevit_torch.preprocessing import Preprocessing
from mobilevit_torch.weights import WeightsError

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "MobileViT",
    "MobileViTConfig",
    "Preprocessing",
    "StageSpec",
    "UnknownModelError",
    "WeightsError",
    "create_model",
    "list_models",
    "register_model",
]
