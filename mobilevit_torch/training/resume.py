"""What a resumed run trains with: the checkpoint's settings, changed only where asked, and its state.

Settings are compared and merged as flat dotted keys (``recipe.lr``) over plain nested dicts: the
``config`` a checkpoint stores and the one a command line composes. :func:`restore` puts the
training state (weights, optimizer, loss scale, EMA, random streams) back as the checkpoint left it;
:func:`rng_state` is what a checkpoint stores of the random streams.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilevit_torch.checkpoint import unwrap_model
from mobilevit_torch.training.checkpoint import read_training_checkpoint
from mobilevit_torch.training.config import ConfigError, TrainConfig
from mobilevit_torch.training.ema import ModelEma

# Settings a resume cannot change: what the restored state or the run's split.json belongs to.
FIXED = {
    "model.name": "the checkpoint holds this model's weights",
    "data.kind": "the run's split.json fixes its photos",
    "data.root": "the run's split.json fixes its photos",
    "data.val_fraction": "the run's split.json fixes its photos",
    "recipe.optimizer": "the checkpoint holds this optimizer's state",
    "recipe.accum_steps": "the checkpoint counts its steps in groups of this size",
}
# Settings of one invocation, never inherited from the checkpoint.
PER_INVOCATION = ("resume", "stop_after")


# A run's state before its first epoch (copy before changing): no best epoch yet, no epoch sums.
NO_BEST: dict[str, Any] = {"val_acc": -1.0, "epoch": -1, "weights": "model"}
NO_SUMS: dict[str, float] = {"loss": 0.0, "correct": 0.0, "seen": 0.0}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and other values are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def resume_settings(composed: dict[str, Any], explicit: Iterable[str]) -> dict[str, Any]:
    """The settings to resume ``composed["resume"]`` with: the checkpoint's ``config``, except for the
    keys in ``explicit`` (dotted; a key also covers the keys under it), the per-invocation ones
    (``resume``, ``stop_after``) and keys the checkpoint predates, which come from ``composed``."""
    stored = flatten(read_training_checkpoint(composed["resume"])["config"])
    explicit = tuple(explicit)

    def from_command_line(key: str) -> bool:
        return key in PER_INVOCATION or key not in stored or any(key == e or key.startswith(f"{e}.") for e in explicit)

    current = flatten(composed)
    return unflatten({key: value if from_command_line(key) else stored[key] for key, value in current.items()})


def resume_changes(stored: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """One ``resume: key old -> new`` line per setting in which ``config`` differs from the checkpoint's
    ``stored`` one (per-invocation keys aside).

    Raises:
        ConfigError: a setting in :data:`FIXED` differs.
    """
    before, after = flatten(stored), flatten(config)
    lines = []
    for key, value in after.items():
        if key in PER_INVOCATION or key not in before or _same(key, before[key], value):
            continue
        if key in FIXED:
            raise ConfigError(
                f"resume: {key} cannot change when resuming ({before[key]!r} in the checkpoint, {value!r} now): "
                f"{FIXED[key]}"
            )
        lines.append(f"resume: {key} {before[key]} -> {value} (overrides the checkpoint's setting)")
    return lines


def restore(
    payload: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ema: ModelEma | None,
    class_names: list[str],
    config: TrainConfig,
) -> tuple[int, int, list, dict, dict]:
    """Put model, optimizer, scaler, EMA and RNGs back exactly as the checkpoint left them."""
    if payload["model_name"] != config.model.name:
        raise ConfigError(f"resume: the checkpoint is a {payload['model_name']}, but model={config.model.name}")
    if list(payload["class_names"]) != list(class_names):
        raise ConfigError(
            f"resume: the checkpoint's classes {payload['class_names']} differ from the data's {class_names}"
        )
    unwrap_model(model).load_state_dict(payload["state_dict"])
    options = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except ValueError as error:
        raise ConfigError(f"resume: the checkpoint's optimizer state does not fit this optimizer ({error})") from None
    for group, current in zip(optimizer.param_groups, options, strict=True):
        group.update(current)  # this run's settings (weight decay, fused, ...); the checkpoint's moments
    if scaler.is_enabled() and payload["scaler"]:  # an fp16 run's loss scale; empty from a run without one
        scaler.load_state_dict(payload["scaler"])
    if ema is not None and payload.get("ema"):
        ema.load_state_dict(payload["ema"])
    step_in_epoch = int(payload.get("step_in_epoch", 0))
    if step_in_epoch:  # mid-epoch: continue the interrupted epoch's random stream
        set_rng_state(payload["rng"])
    return (
        int(payload["epoch"]),
        step_in_epoch,
        list(payload.get("history", [])),
        dict(payload.get("best", NO_BEST)),
        dict(payload.get("epoch_sums") or NO_SUMS),
    )


def rng_state(device: torch.device) -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _same(key: str, old: Any, new: Any) -> bool:
    if key == "data.root" and isinstance(old, str) and isinstance(new, str):
        return Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
    return old == new or (isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and list(old) == list(new))
