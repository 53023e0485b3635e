"""Where and how a training step runs: the device, autocast's precision, and the optional kernels."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from mobilevit_torch.layers.fused_norm import fused_norm_blocked, set_fused_norm
from mobilevit_torch.layers.layer_norm import set_low_precision_layernorm
from mobilevit_torch.training.config import ConfigError, TrainConfig

logger = logging.getLogger("mobilevit_torch.train")


def training_device(name: str) -> torch.device:
    """The config's ``device`` (``auto``, ``cpu`` or ``cuda``; a DDP rank picks its GPU later); a
    :class:`ConfigError` for ``cuda`` without one. ``evaluation.resolve_device`` is the scripts' own,
    which also takes ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available (use device=cpu or device=auto)")
    return torch.device(name)


def amp_precision(enabled: bool, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that have it, fp16 (with loss scaling) on older ones, none on the CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def set_training_kernels(model: nn.Module, config: TrainConfig, device: torch.device, amp_dtype: Any) -> None:
    """Switch on the kernels the config asks for where they apply; log for each whether it is on, or why not."""
    if config.fused_norm:
        blocked = fused_norm_blocked(device, channels_last=config.channels_last, compiled=config.compile)
        state = f"on ({set_fused_norm(model)} units)" if blocked is None else f"off ({blocked})"
        logger.info("fused BatchNorm+SiLU kernels: %s", state)
    if config.layernorm_low_precision:
        blocked = "amp is off" if amp_dtype is None else "torch.compile fuses the casts" if config.compile else None
        state = f"on ({set_low_precision_layernorm(model)} LayerNorms)" if blocked is None else f"off ({blocked})"
        logger.info("LayerNorm in autocast's dtype: %s", state)
