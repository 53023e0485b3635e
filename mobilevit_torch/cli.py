"""What the command-line entry points share: user mistakes become one line on stderr, not a traceback."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Run ``fn``; print known user-facing errors as ``error: ...`` and exit with a status code.

    Exit codes: 2 for bad arguments, paths, data or weights; 1 for a diverged run; 128 + signal
    number for a run stopped by SIGINT/SIGTERM (after its resumable checkpoint was saved).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from omegaconf.errors import OmegaConfBaseException

        from mobilevit_torch.data.folder import DataError
        from mobilevit_torch.registry import UnknownModelError
        from mobilevit_torch.training.config import ConfigError
        from mobilevit_torch.training.loop import TrainingDiverged, TrainingInterrupted
        from mobilevit_torch.weights import WeightsError

        try:
            return fn(*args, **kwargs)
        except TrainingInterrupted as err:
            _fail(str(err), 128 + int(err.signum))
        except TrainingDiverged as err:
            _fail(str(err), 1)
        except (ConfigError, DataError, WeightsError, UnknownModelError, FileNotFoundError) as err:
            _fail(str(err), 2)
        except OmegaConfBaseException as err:
            _fail(str(err).splitlines()[0], 2)
        except KeyboardInterrupt:
            _fail("interrupted", 128 + signal.SIGINT)

    return wrapper  # type: ignore[return-value]


def _fail(message: str, code: int) -> None:
    logging.shutdown()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def one_line(error: BaseException) -> str:
    """An exception's message folded onto one line (for ``error: ...`` output)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
