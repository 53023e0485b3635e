"""User mistakes become one line on stderr (``error: ...``) and an exit status, not a traceback."""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Run ``fn``; print known user-facing errors as ``error: ...`` and exit with a status code.

    Exit codes: 2 for bad arguments, paths, data or weights; 1 for a diverged run or a checkpoint
    that could not be written; 128 + signal number for a run stopped by SIGINT/SIGTERM (after its
    resumable checkpoint was saved).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            fail("interrupted", 128 + signal.SIGINT)
        except Exception as err:
            code = exit_code(err)
            if code is None:
                raise
            fail(_one_line(err), code)

    return wrapper  # type: ignore[return-value]


# The errors a command line reports as one line, by the module that defines them and the exit status
# (None: 128 + the signal's number). Looked up in sys.modules, not imported: an error whose module was
# never imported cannot have been raised, and importing these modules means importing torch (seconds),
# which a mistake caught before any of them ran should not wait for.
_USER_ERRORS: tuple[tuple[str, str, int | None], ...] = (
    ("mobilevit_torch.training.stopping", "TrainingInterrupted", None),
    ("mobilevit_torch.training.stopping", "TrainingDiverged", 1),
    ("mobilevit_torch.training.checkpoint", "CheckpointWriteError", 1),
    ("mobilevit_torch.checkpoint", "CheckpointError", 2),
    ("mobilevit_torch.training.config", "ConfigError", 2),
    ("mobilevit_torch.data.folder", "DataError", 2),
    ("mobilevit_torch.weights.layouts", "WeightsError", 2),
    ("mobilevit_torch.registry", "UnknownModelError", 2),
    ("omegaconf.errors", "OmegaConfBaseException", 2),
    ("builtins", "FileNotFoundError", 2),
)


def exit_code(err: Exception) -> int | None:
    """The exit status for a user-facing error, or None for anything else (a bug: its traceback shows)."""
    for module_name, class_name, code in _USER_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(err, getattr(module, class_name)):
            return 128 + int(err.signum) if code is None else code  # type: ignore[attr-defined]
    return None


def _one_line(err: Exception) -> str:
    """OmegaConf's errors carry a multi-line report of where in the config they arose: its first line."""
    omegaconf_errors = sys.modules.get("omegaconf.errors")
    if omegaconf_errors is not None and isinstance(err, omegaconf_errors.OmegaConfBaseException):
        return str(err).splitlines()[0]
    return str(err)


def fail(message: str, code: int) -> None:
    """Print ``error: message`` after whatever was logged so far, and exit with ``code``.

    The log handlers are flushed, not shut down: closing them here would close streams that are not
    ours to close (absl's handler, which TensorFlow installs, closes a stream that is not the current
    ``sys.stderr``, e.g. one that pytest captured), and ``sys.exit`` shuts logging down anyway."""
    for logger in (logging.getLogger(), *logging.Logger.manager.loggerDict.values()):
        for handler in getattr(logger, "handlers", ()):  # placeholders in loggerDict have none
            handler.flush()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def one_line(error: BaseException) -> str:
    """An exception's message folded onto one line (for ``error: ...`` output)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
