"""What the command-line entry points share: user mistakes become one line on stderr, not a traceback."""

from __future__ import annotations

import argparse
import ctypes
import difflib
import functools
import logging
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
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
    ("mobilevit_torch.training.loop", "TrainingInterrupted", None),
    ("mobilevit_torch.training.loop", "TrainingDiverged", 1),
    ("mobilevit_torch.training.checkpoint", "CheckpointWriteError", 1),
    ("mobilevit_torch.training.checkpoint", "CheckpointError", 2),
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

    ``train.py``, ``evaluate.py`` and ``predict.py`` call this before their large allocations (``export.py``
    does not: it runs one model once); the library never does (it is process-wide).
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


def check_overrides(argv: list[str], keys: list[str], groups: dict[str, list[str]]) -> list[str]:
    """Refuse an unknown ``key=value`` (or config group option) before Hydra starts, with one line
    naming it and the closest key; Hydra's own answer is a paragraph. ``keys``: every settable dotted
    key; ``groups``: each config group's options (``model``: ``s``, ``xs``, ``xxs``).

    Returns the arguments to hand to Hydra: ``argv`` with each value Hydra's override grammar cannot
    read quoted for it (see :func:`quote_for_hydra`). Hydra's own answers, a paragraph or a traceback, are
    also replaced by one line for an empty value (``checkpoint=$UNSET``), a group set to ``null`` and a
    sweep (``format=onnx,tflite``) without ``-m``."""
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    for arg in argv:
        if arg.startswith("~"):  # Hydra deletes the key: a required one fails later, deep in the command
            key = arg[1:].split("=", 1)[0]
            if key != "hydra" and not key.startswith("hydra."):
                fail(f"{arg} deletes the setting {key!r}: give {key}=VALUE instead, or leave it out for its default", 2)
            continue
        if arg.startswith("-") or "=" not in arg:
            continue  # Hydra's flags (--cfg job, -m, --help) and their values
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        if key == "hydra" or key.startswith("hydra."):
            continue
        if value == "":  # Hydra reads it as '': a path would become "."
            fail(f"{key}= has no value (an unset shell variable?): give {key}=VALUE, or leave {key}= out", 2)
        options = groups.get(key)
        for choice in value.split(",") if options is not None else []:  # -m sweeps: model=xxs,xs
            if choice not in options:
                close = difflib.get_close_matches(choice, options, n=1)
                hint = f" (did you mean {key}={close[0]}?)" if close else ""
                fail(f"unknown {key} {choice!r}{hint}: choose {key}={'|'.join(options)}", 2)
        if key in keys or key in groups:
            continue
        # recipe.lr for lr, then the closest spelling (data.batch_size for data.batchsize)
        close = [k for k in keys if k.endswith("." + key)] or difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"options: {', '.join(keys)}"
        fail(f"unknown option {key!r} ({hint})", 2)
    quoted = [quote_for_hydra(arg) for arg in argv]
    if not multirun:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        for arg in quoted:
            if not arg.startswith("-") and "=" in arg and parser.parse_overrides([arg])[0].is_sweep_override():
                key, value = arg.split("=", 1)
                in_hydra = _hydra_quoted(value, quote='"')
                quote = f"; if the comma is part of the value, quote it: {key}='{in_hydra}'"
                fail(f"{arg} is a sweep, one run per value: add -m to run them{'' if key in groups else quote}", 2)
    return quoted


def quote_for_hydra(arg: str) -> str:
    """``key=value`` as Hydra can read it: quoted when Hydra cannot read the value as written.

    Hydra's grammar takes an unquoted value as ASCII letters, digits and a few punctuation marks, so a
    path such as ``checkpoint=runs/été (1)/best.pt`` (or ``~/runs/best.pt``, or one holding ``=`` or
    ``#``) is a parse error there. Such a value is text whatever it holds, so it is handed on quoted
    and reaches the program as typed. A value that looks like a broken list, dict or quoted string
    (``[160,192``) is not guessed at: it is refused in one line that shows the quoted form.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    if arg.startswith("-") or "=" not in arg:
        return arg
    parser = OverridesParser.create()
    try:
        parser.parse_overrides([arg])
        return arg
    except OverrideParseException as error:
        reason = str(error).splitlines()[0]
    key, value = arg.split("=", 1)
    quoted = f"{key}={_hydra_quoted(value)}"
    if not value.startswith(("[", "{", "'", '"')):
        try:
            parser.parse_overrides([quoted])
            return quoted
        except OverrideParseException:
            pass
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]  # quoted already, but not as Hydra reads quotes: show how
    if "'" in value:
        in_bash = shlex.quote(f"{key}={_hydra_quoted(value)}")
    else:  # the usual form: Hydra's double quotes inside the shell's single quotes
        in_hydra = _hydra_quoted(value, quote='"')
        in_bash = f"{key}='{in_hydra}'"
    fail(f"Hydra cannot read {arg} ({reason}); if the value is text, quote it: {in_bash}", 2)
    return arg  # not reached: fail exits


def _hydra_quoted(value: str, quote: str | None = None) -> str:
    """``value`` as a quoted string of Hydra's grammar: the quote character escaped inside it, and
    backslashes doubled where they precede a quote (only there are they special)."""
    if quote is None:
        quote = '"' if "'" in value and '"' not in value else "'"
    body = re.sub(r"(\\*)(" + re.escape(quote) + "|$)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), value)
    return quote + body + quote


def drop_unused_run_dir(folder: Path) -> None:
    """Remove Hydra's run folder when the command left nothing in it but a ``.hydra/`` record, and the
    folders above it that are then empty, up to the working directory (Hydra makes them all before the
    entry point runs: a refused command, or one whose files went elsewhere, leaves no trace)."""
    cwd = Path.cwd().resolve()
    folder = folder.resolve()
    while folder != cwd and folder.is_dir() and {path.name for path in folder.iterdir()} <= {".hydra"}:
        try:
            shutil.rmtree(folder)
        except OSError:
            return
        if cwd not in folder.parents:  # outside the working directory: only the run folder itself
            return
        folder = folder.parent


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


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def start_inference_script(checkpoint: Path, device: str) -> int | None:
    """What ``evaluate.py`` and ``predict.py`` do before importing torch: logging (warnings, one per
    line), :func:`keep_freed_memory`, and the checks that need no torch, so a missing checkpoint or a
    misspelt device is told at once. The exit status after printing the error, or None to go on."""
    from mobilevit_torch.files import existing_path

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("mobilevit_torch").debug("memory: %s", keep_freed_memory())
    try:
        existing_path(checkpoint, "checkpoint")
        check_device_name(device)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return None


def check_device_name(text: str) -> None:
    """Refuse a device other than ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (a ValueError), torch-free:
    a typo is told at once; whether this machine has the device is checked once torch is loaded."""
    if re.fullmatch(r"auto|cpu(:0)?|cuda(:\d+)?", text) is None:
        raise ValueError(f"unsupported device {text!r} (use auto, cpu, cuda or cuda:N)")


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def one_line(error: BaseException) -> str:
    """An exception's message folded onto one line (for ``error: ...`` output)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
