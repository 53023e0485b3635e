"""What a resumed run trains with: the checkpoint's settings, changed only where asked.

Settings are compared and merged as flat dotted keys (``recipe.lr``) over plain nested dicts: the
``config`` a checkpoint stores and the one a command line composes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mobilevit_torch.training.checkpoint import read_training_checkpoint
from mobilevit_torch.training.config import ConfigError

# Settings a resume cannot change: what the restored state or the run's split.json belongs to.
FIXED = {
    "model.name": "the checkpoint holds this model's weights",
    "data.kind": "the run's split.json fixes its photos",
    "data.root": "the run's split.json fixes its photos",
    "data.val_fraction": "the run's split.json fixes its photos",
    "recipe.optimizer": "the checkpoint holds this optimizer's state",
    "recipe.accum_steps": "the checkpoint counts its steps in groups of this size",
}
# Settings of one invocation, never inherited from the checkpoint.
PER_INVOCATION = ("resume", "stop_after")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and other values are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def resume_settings(composed: dict[str, Any], explicit: Iterable[str]) -> dict[str, Any]:
    """The settings to resume ``composed["resume"]`` with: the checkpoint's ``config``, except for the
    keys in ``explicit`` (dotted; a key also covers the keys under it), the per-invocation ones
    (``resume``, ``stop_after``) and keys the checkpoint predates, which come from ``composed``."""
    stored = flatten(read_training_checkpoint(composed["resume"])["config"])
    explicit = tuple(explicit)

    def from_command_line(key: str) -> bool:
        return key in PER_INVOCATION or key not in stored or any(key == e or key.startswith(f"{e}.") for e in explicit)

    current = flatten(composed)
    return unflatten({key: value if from_command_line(key) else stored[key] for key, value in current.items()})


def resume_changes(stored: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """One ``resume: key old -> new`` line per setting in which ``config`` differs from the checkpoint's
    ``stored`` one (per-invocation keys aside).

    Raises:
        ConfigError: a setting in :data:`FIXED` differs.
    """
    before, after = flatten(stored), flatten(config)
    lines = []
    for key, value in after.items():
        if key in PER_INVOCATION or key not in before or _same(key, before[key], value):
            continue
        if key in FIXED:
            raise ConfigError(
                f"resume: {key} cannot change when resuming ({before[key]!r} in the checkpoint, {value!r} now): "
                f"{FIXED[key]}"
            )
        lines.append(f"resume: {key} {before[key]} -> {value} (overrides the checkpoint's setting)")
    return lines


def _same(key: str, old: Any, new: Any) -> bool:
    if key == "data.root" and isinstance(old, str) and isinstance(new, str):
        return Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
    return old == new or (isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and list(old) == list(new))
