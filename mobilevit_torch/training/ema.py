"""Exponential moving average of a model's weights, evaluated alongside the model."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


class ModelEma:
    """Keeps ``ema = decay * ema + (1 - decay) * model`` for every parameter and buffer.

    The decay ramps up as ``min(decay, (1 + updates) / (10 + updates))`` so early averages are not
    dominated by the random initialisation. An update is two halves so that a CUDA graph can replay
    it: :meth:`advance` (host: count the update, write this step's weight into a device scalar) and
    :meth:`apply` (device only: fused foreach ops reading that scalar, no host synchronisation).
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self.weight = torch.zeros((), device=next(model.parameters()).device)  # 1 - decay of this update

    def update(self, model: nn.Module) -> None:
        self.advance()
        self.apply(model)

    def advance(self) -> None:
        self.updates += 1
        self.weight.fill_(1.0 - min(self.decay, (1 + self.updates) / (10 + self.updates)))

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        ema_float: list[Tensor] = []
        model_float: list[Tensor] = []
        for ema_value, value in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_value.is_floating_point():
                ema_float.append(ema_value)
                model_float.append(value.detach())
            else:
                ema_value.copy_(value)  # counters such as BatchNorm's num_batches_tracked
        step = torch._foreach_sub(model_float, ema_float)  # ema += weight * (model - ema)
        torch._foreach_mul_(step, self.weight)
        torch._foreach_add_(ema_float, step)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
