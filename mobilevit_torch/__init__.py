"""mobilevit-torch: a faithful, fast MobileViT (Mehta & Rastegari 2021, arXiv 2110.02178).

The public names below are imported on first use (PEP 562), so importing a torch-free part of the
package (``mobilevit_torch.cli``, which every command line imports before parsing its arguments)
does not import torch: ``python evaluate.py --help`` answers at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mobilevit_torch.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "UnknownModelError": "mobilevit_torch.registry",
    "create_model": "mobilevit_torch.registry",
    "list_models": "mobilevit_torch.registry",
    "register_model": "mobilevit_torch.registry",
    "VARIANTS": "mobilevit_torch.models",
    "MobileViT": "mobilevit_torch.models",
    "MobileViTConfig": "mobilevit_torch.models",
    "StageSpec": "mobilevit_torch.models",
    "Preprocessing": "mobilevit_torch.preprocessing",
    "WeightsError": "mobilevit_torch.weights",
}

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

if TYPE_CHECKING:
    from mobilevit_torch.models import VARIANTS, MobileViT, MobileViTConfig, StageSpec
    from mobilevit_torch.preprocessing import Preprocessing
    from mobilevit_torch.registry import UnknownModelError, create_model, list_models, register_model
    from mobilevit_torch.weights import WeightsError


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
