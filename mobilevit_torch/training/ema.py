"""Exponential moving average of a model's weights, evaluated alongside the model."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """Keeps ``ema = decay * ema + (1 - decay) * model`` for every parameter and buffer.

    The decay ramps up as ``min(decay, (1 + updates) / (10 + updates))`` so early averages are not
    dominated by the random initialisation. Updates run as fused foreach ops on the model's device
    with no host synchronisation.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_float, model_float, ema_other, model_other = [], [], [], []
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_value.is_floating_point():
                ema_float.append(ema_value)
                model_float.append(value.detach())
            else:
                ema_other.append(ema_value)
                model_other.append(value)
        torch._foreach_lerp_(ema_float, model_float, 1.0 - decay)
        for ema_value, value in zip(ema_other, model_other, strict=True):
            ema_value.copy_(value)  # counters such as BatchNorm's num_batches_tracked

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
