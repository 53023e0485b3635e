"""Self-describing training checkpoints, written atomically.

A checkpoint is a plain dictionary (read back with ``torch.load(weights_only=True)``)::

    format          "mobilevit-torch"
    model_name      registry name, e.g. "mobilevit_xxs"
    model_args      keyword arguments for create_model (num_classes, drop_rate, ...)
    class_names     list of class names, index = class id
    preprocessing   Preprocessing.to_dict() (input size, crop, interpolation, scaling, channel order)
    state_dict      model weights (of the uncompiled, unwrapped module)
    ... training state: epoch, optimizer, scaler, ema, rng, config, metrics (see train.py)

``create_model(model_name, pretrained=path)`` loads one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilevit_torch.weights import CHECKPOINT_FORMAT


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        else:
            return model


def model_payload(model: nn.Module, class_names: list[str] | None = None) -> dict[str, Any]:
    """The part of a checkpoint that describes and holds the model."""
    model = unwrap_model(model)
    return {
        "format": CHECKPOINT_FORMAT,
        "model_name": model.model_name,
        "model_args": dict(model.model_args),
        "class_names": list(class_names if class_names is not None else (model.class_names or [])),
        "preprocessing": model.preprocessing.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class CheckpointError(ValueError):
    """A path that does not hold a usable mobilevit-torch training checkpoint (one-line message)."""


class NotACheckpointError(CheckpointError):
    """A readable file that is something else (other weights, a different pickle)."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise NotACheckpointError(f"{path} is not a mobilevit-torch training checkpoint")
    return payload


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint a user named, checked: a file, readable without unpickling objects, ours, with a model name.

    Raises:
        FileNotFoundError: nothing at ``path``.
        NotACheckpointError: a readable file that is not a mobilevit-torch training checkpoint.
        CheckpointError: a folder, an unreadable file, or a checkpoint that names no model.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file inside it (e.g. {path / 'best.pt'})")
    try:
        payload = load_checkpoint(path)
    except NotACheckpointError:
        raise
    except Exception as error:  # not a torch file at all, or one holding pickled objects we refuse
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        raise CheckpointError(f"cannot read {path} as a mobilevit-torch training checkpoint ({reason})") from None
    if not isinstance(payload.get("model_name"), str):
        raise CheckpointError(f"{path} does not say which model it holds (no 'model_name')")
    return payload
