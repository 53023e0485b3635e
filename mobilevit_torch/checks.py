"""Argument checks shared by the public functions: a bad value is named here, not deep inside torch."""

from __future__ import annotations

import operator
from typing import Any


def check_count(name: str, value: Any, *, minimum: int, error: type[ValueError] = ValueError) -> int:
    """``value`` as an ``int`` of at least ``minimum``; numpy integers are accepted.

    A ``TypeError`` for a float, string or bool (torch, ``range`` or the DataLoader would otherwise fail
    later in their own words), ``error`` (a ``ValueError``) below ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type_name(value)} {value!r}") from None
    if value < minimum:
        raise error(f"{name} must be >= {minimum}, got {value}")
    return value


def type_name(value: Any) -> str:
    """``str``, ``float``; a type from outside the builtins with its module (``numpy.float64``)."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
