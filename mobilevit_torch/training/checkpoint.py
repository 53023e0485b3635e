"""The training side of checkpoints: a background writer, and the checks a resume needs.

What a checkpoint holds, and writing and reading one, is ``mobilevit_torch/checkpoint.py``. The
training loop hands its checkpoints to a :class:`CheckpointWriter`, which writes them in a
background thread: training goes on while a checkpoint is serialised and synced to disk.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mobilevit_torch.checkpoint import CheckpointError, host_copy, read_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


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
