"""The checkpoint format: what a mobilevit-torch checkpoint holds, writing one atomically, reading one safely.

A checkpoint is a plain dictionary (read back with ``torch.load(weights_only=True)``)::

    format          "mobilevit-torch"
    model_name      registry name, e.g. "mobilevit_xxs"
    model_args      keyword arguments for create_model (num_classes, drop_rate, ...)
    class_names     list of class names, index = class id
    preprocessing   Preprocessing.to_dict() (input size, crop, interpolation, scaling, channel order)
    state_dict      model weights (of the uncompiled, unwrapped module)

``last.pt`` adds the state a resume needs (built in ``training/loop.py``): ``epoch``, ``step_in_epoch``
and ``epoch_sums`` (where in the run it stopped), ``optimizer``, ``scaler``, ``ema``, ``rng``,
``config``, ``history`` (every epoch's metrics record), ``best`` and ``best_confusion``. ``best.pt``
adds ``epoch``, ``best``, ``confusion`` and ``config``: weights, not a resume point.

``create_model(model_name, pretrained=path)`` loads one. Tensors are always stored on the CPU.

Training writes them (``training/checkpoint.py`` adds the background writer and resume's checks);
evaluation, prediction and export read them with :func:`read_checkpoint`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilevit_torch.files import atomic_write, existing_path
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
        "state_dict": {k: v.detach() for k, v in model.state_dict().items()},  # saving copies them to the CPU
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (a temporary file in the same folder, then rename), its
    tensors on the CPU."""
    path = Path(path)
    payload = host_copy(payload, clone=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb", sync=True) as file:
        torch.save(payload, file)
    return path


def host_copy(payload: Any, *, clone: bool = True) -> Any:
    """``payload`` (nested dicts, lists, tuples) with every tensor copied to the CPU, as it is now.

    GPU tensors are copied synchronously (at the end of an epoch the GPU is idle, so 1,268 small
    copies cost a few milliseconds): the writer thread then never calls into CUDA, which could
    interfere with a CUDA graph being captured by the training thread. CPU tensors are cloned
    (``clone=False``: used as they are)."""
    if isinstance(payload, torch.Tensor):
        tensor = payload.detach()
        if tensor.device.type != "cpu":
            return tensor.to("cpu")
        return tensor.clone() if clone else tensor
    if isinstance(payload, dict):
        return {key: host_copy(value, clone=clone) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        copied = [host_copy(value, clone=clone) for value in payload]
        return copied if isinstance(payload, list) else tuple(copied)
    return payload


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
        CheckpointError: a folder, an unreadable file, or a checkpoint that names no model or holds no weights.
    """
    path = existing_path(path, "checkpoint")
    if path.is_dir():
        found = sorted(path.glob("*.pt"), key=lambda p: (p.name != "best.pt", p.name))
        if found:
            raise CheckpointError(f"{path} is a folder; pass the checkpoint file inside it (e.g. {found[0]})")
        raise CheckpointError(f"{path} is a folder with no checkpoint (.pt) in it; name the checkpoint file")
    try:
        payload = load_checkpoint(path)
    except NotACheckpointError:
        raise
    except Exception as error:  # not a torch file at all, or one holding pickled objects we refuse
        reason = _unreadable(path, error)
        raise CheckpointError(f"cannot read {path} as a mobilevit-torch training checkpoint ({reason})") from None
    if not isinstance(payload.get("model_name"), str):
        raise CheckpointError(f"{path} does not say which model it holds (no 'model_name')")
    if not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path} holds no weights (no 'state_dict' in the checkpoint)")
    return payload


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch.load failed, in a few words (its own messages run to several sentences, or say ``KeyError: 105``)."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        return "not a PyTorch checkpoint file: another format, or truncated"
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(error).__name__
