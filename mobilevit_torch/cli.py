"""What the command-line entry points share: user mistakes become one line on stderr, not a traceback."""

from __future__ import annotations

import argparse
import ctypes
import difflib
import functools
import logging
import os
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
        from omegaconf.errors import OmegaConfBaseException

        from mobilevit_torch.data.folder import DataError
        from mobilevit_torch.registry import UnknownModelError
        from mobilevit_torch.training.checkpoint import CheckpointError, CheckpointWriteError
        from mobilevit_torch.training.config import ConfigError
        from mobilevit_torch.training.loop import TrainingDiverged, TrainingInterrupted
        from mobilevit_torch.weights import WeightsError

        try:
            return fn(*args, **kwargs)
        except TrainingInterrupted as err:
            _fail(str(err), 128 + int(err.signum))
        except (TrainingDiverged, CheckpointWriteError) as err:
            _fail(str(err), 1)
        except (ConfigError, CheckpointError, DataError, WeightsError, UnknownModelError, FileNotFoundError) as err:
            _fail(str(err), 2)
        except OmegaConfBaseException as err:
            _fail(str(err).splitlines()[0], 2)
        except KeyboardInterrupt:
            _fail("interrupted", 128 + signal.SIGINT)

    return wrapper  # type: ignore[return-value]


# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and stay there when freed; larger ones are still mmapped.
_KEEP_BELOW = 1 << 30
OPT_OUT = "MOBILEVIT_KEEP_FREED_MEMORY"


def keep_freed_memory() -> str:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel; says what it did.

    By default glibc hands a freed block of more than a few MiB straight back (``munmap``, or by
    trimming the heap), so the next step's activations are mapped in again page by page: on a CPU
    a batch-32 XXS training step took ~670,000 page faults and ran 1.6x slower for it
    (``benchmarks/NOTES.md``). Raising the mmap threshold to 1 GiB and turning heap trimming off
    (``mallopt``, the same as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``) keeps that
    memory in the process; the price is a peak resident size that does not shrink back (+11 % there).

    The command-line entry points call this first; the library never does (it is process-wide).
    Nothing changes when ``MOBILEVIT_KEEP_FREED_MEMORY=0``, when the user tuned malloc already
    (``MALLOC_*``, ``GLIBC_TUNABLES``, or an allocator in ``LD_PRELOAD``), or off glibc.
    """
    if os.environ.get(OPT_OUT, "1") == "0":
        return f"malloc left alone ({OPT_OUT}=0)"
    if any(key.startswith("MALLOC_") for key in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return "malloc left alone (tuned by MALLOC_*/GLIBC_TUNABLES)"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return "malloc left alone (another allocator is preloaded)"
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl, macOS and Windows lack it)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return "malloc left alone (not glibc)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW) and mallopt(_M_TRIM_THRESHOLD, -1):  # -1: never trim
        return f"glibc malloc keeps freed memory for reuse ({OPT_OUT}=0 turns this off)"
    return "malloc left alone (mallopt refused)"


def check_overrides(argv: list[str], keys: list[str], groups: dict[str, list[str]]) -> None:
    """Refuse an unknown ``key=value`` (or config group option) before Hydra starts, with one line
    naming it and the closest key; Hydra's own answer is a paragraph. ``keys``: every settable dotted
    key; ``groups``: each config group's options (``model``: ``s``, ``xs``, ``xxs``)."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue  # Hydra's flags (--cfg job, -m, --help) and their values
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key == "hydra" or key.startswith("hydra."):
            continue
        options = groups.get(key)
        for choice in value.split(",") if options is not None else []:  # -m sweeps: model=xxs,xs
            if choice not in (*options, "null"):
                close = difflib.get_close_matches(choice, options, n=1)
                hint = f" (did you mean {key}={close[0]}?)" if close else ""
                _fail(f"unknown {key} {choice!r}{hint}: choose {key}={'|'.join(options)}", 2)
        if key in keys or key in groups:
            continue
        # recipe.lr for lr, then the closest spelling (data.batch_size for data.batchsize)
        close = [k for k in keys if k.endswith("." + key)] or difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"options: {', '.join(keys)}"
        _fail(f"unknown option {key!r} ({hint})", 2)


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
