"""The optimizer and its plan: parameter groups, the steps and updates of an epoch, the learning rate of each update."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mobilevit_torch.training.config import ConfigError, TrainConfig
from mobilevit_torch.training.schedule import learning_rate


def build_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device, *, capturable: bool = False
) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norm parameters (1-D tensors); Adam for the Keras recipe.

    Fused kernels on CUDA; ``capturable`` keeps the step counts on the device (a CUDA graph replays it)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    options = {"lr": config.recipe.lr, "fused": device.type == "cuda", "capturable": capturable}
    if config.recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), **options)
    return torch.optim.AdamW(groups, **options)


def update_plan(config: TrainConfig, batches: int) -> tuple[int, int, Callable[[int], float]]:
    """The steps of an epoch of ``batches`` (capped by ``max_steps_per_epoch``, whole accumulation
    groups), its optimizer updates, and the learning rate of each update of the run."""
    steps = min(batches, config.max_steps_per_epoch) if config.max_steps_per_epoch else batches
    accum = config.recipe.accum_steps
    if steps < accum:
        raise ConfigError(f"recipe.accum_steps={accum} is more than the {steps} steps of an epoch")
    steps -= steps % accum  # one update per `accum` batches
    updates = steps // accum

    def lr_at(update: int) -> float:
        return learning_rate(
            update,
            base_lr=config.recipe.lr,
            total_steps=config.epochs * updates,
            warmup_steps=round(config.recipe.warmup_epochs * updates),
            min_lr=config.recipe.min_lr,
            schedule=config.recipe.schedule,
        )

    return steps, updates, lr_at
