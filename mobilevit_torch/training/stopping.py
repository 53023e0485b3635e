"""How a run stops before its last epoch: a diverged loss, or SIGINT/SIGTERM (after a resumable checkpoint)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

logger = logging.getLogger("mobilevit_torch.train")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a resumable checkpoint was written first."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignal:
    """Remembers SIGINT/SIGTERM so the loop can save a resumable checkpoint before exiting.

    Processes forked after it is installed (DataLoader workers) inherit the handler; Ctrl-C reaches
    them too, so the handler acts only in the process that installed it and the others ignore it
    (the main process stops them when it exits).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked worker: the main process speaks and saves
            return
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: saving a resumable checkpoint after this step", signal.Signals(signum).name)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def diverged_message(epoch: int, step: int, value: float, run_dir: Path, clip_grad: float) -> str:
    last = run_dir / "last.pt"
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
    clip = "set recipe.clip_grad=1.0" if clip_grad <= 0 else f"a recipe.clip_grad below {clip_grad:g}"
    return f"loss became {value} at epoch {epoch + 1}, step {step + 1}: stopping; {kept}. Lower recipe.lr, or {clip}."
