"""Self-describing training checkpoints, written atomically.

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

The training loop hands its checkpoints to a :class:`CheckpointWriter`, which writes them in a
background thread: training goes on while a checkpoint is serialised and synced to disk.
"""

from __future__ import annotations

import logging
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilevit_torch.files import atomic_write, existing_path
from mobilevit_torch.weights import CHECKPOINT_FORMAT

logger = logging.getLogger(__name__)


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


class CheckpointWriter:
    """Writes checkpoints in a background thread, in the order they were handed over, each atomically.

    :meth:`save` takes a snapshot of the payload's tensors (:func:`host_copy`: the values as of the
    call, whatever training does to them afterwards) and returns; serialising and syncing the file
    (about 0.1 s for XXS with optimizer and EMA state) happen in the writer thread. At most
    ``max_pending`` snapshots wait at a time, so memory stays bounded. :meth:`wait` blocks until
    every checkpoint handed over is on disk and re-raises the first write that failed; :meth:`close`
    waits and stops the thread. A process killed mid-write leaves the previous file intact.
    """

    def __init__(self, max_pending: int = 2) -> None:
        self.max_pending = max_pending
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future[Path]] = deque()

    def save(self, path: str | Path, payload: dict[str, Any]) -> None:
        snapshot = host_copy(payload)
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()  # raises a failed write here
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending.append(self._pool.submit(_write, Path(path), snapshot))

    def wait(self) -> None:
        """Block until every checkpoint handed over is written; raise the first failure."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            for future in self._pending:  # after a failure: still let the others finish
                future.exception()
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, folder gone, ...); the previous file is intact."""


def _write(path: Path, snapshot: dict[str, Any]) -> Path:
    try:
        return save_checkpoint(path, snapshot)
    except Exception as error:  # said now; raised in the training thread at its next save or at the end
        message = f"could not write the checkpoint {path}: {error}"
        logger.error(message)
        raise CheckpointWriteError(message) from error


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


TRAINING_STATE = ("epoch", "optimizer", "scaler", "config")


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint to resume training from: :func:`read_checkpoint`, plus the training state a resume needs.

    Raises:
        FileNotFoundError, NotACheckpointError, CheckpointError: as :func:`read_checkpoint`; also
            CheckpointError for weights without training state (a ``best.pt``) or an incomplete one.
    """
    path = Path(path).expanduser()
    payload = read_checkpoint(path)
    if payload.get("optimizer") is None:
        what = "is a best.pt (weights only, no" if "best" in payload else "holds weights only (no"
        raise CheckpointError(f"{path} {what} training state); resume from last.pt in the same folder")
    needed = [*TRAINING_STATE, "rng"] if payload.get("step_in_epoch") else TRAINING_STATE
    missing = [key for key in needed if payload.get(key) is None]
    if missing:
        raise CheckpointError(f"{path} lacks the training state a resume needs (no {', '.join(missing)})")
    return payload
