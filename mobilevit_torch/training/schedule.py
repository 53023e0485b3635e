"""Learning-rate schedule: a pure function of the optimizer step."""

from __future__ import annotations

import math


def learning_rate(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    schedule: str = "cosine",
) -> float:
    """Linear warmup from ``base_lr / warmup_steps`` to ``base_lr``, then cosine decay to ``min_lr``
    (``schedule="cosine"``) or flat (``schedule="constant"``, the original Keras example)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r} (cosine or constant)")
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))
