"""Argument checks the benchmark scripts share: a wrong value ends the script at once, in one line,
before any model is built or timed, not as a traceback after minutes of work."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def require_device(device: str, script: str) -> None:
    """Refuse a device name torch does not run here: a misspelling, or CUDA on a machine without it."""
    import torch

    if re.fullmatch(r"cpu|cuda(:\d+)?", device) is None:
        raise SystemExit(f"{script}: unknown --device {device!r} (use cpu or cuda)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"{script}: --device {device}: no CUDA device visible (this machine has no GPU torch can use)")


def output_file(path: Path | None, option: str) -> Path | None:
    """Make sure ``path`` can be written once the work is done: its folder made now, not a folder itself."""
    if path is None:
        return None
    path = path.expanduser()
    if path.is_dir():
        raise SystemExit(f"{option} {path} is a folder: name the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"{option} {path}: cannot create its folder ({error.strerror or error})") from None
    if not os.access(path.parent, os.W_OK):
        raise SystemExit(f"{option} {path}: its folder is not writable")
    return path
