"""The argparse side of ``evaluate.py`` and ``predict.py``: argument types, and the checks that need no torch."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from mobilevit_torch.cli.memory import keep_freed_memory


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
