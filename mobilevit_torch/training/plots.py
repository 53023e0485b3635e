"""Training curves and confusion matrices as PNG files.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, never
through ``pyplot``: no display is needed, no global backend is switched under the caller's feet,
and nothing is left in pyplot's figure registry to leak memory over a long run.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib import font_manager, ft2font, rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

logger = logging.getLogger(__name__)


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss, accuracy (with the EMA model's when present) and learning rate against epoch.

    ``history`` holds one record per epoch with the keys ``epoch``, ``train_loss``, ``val_loss``,
    ``train_acc``, ``val_acc``, ``ema_val_acc`` and ``lr``; a missing or ``None`` value is simply
    not drawn, so an epoch without validation or a run without EMA plots fine.
    """
    if not history:
        raise ValueError("no epochs to plot: the history is empty")
    epochs = [record.get("epoch", index) for index, record in enumerate(history)]
    figure = Figure(figsize=(15, 4.2), layout="constrained")
    loss_ax, acc_ax, lr_ax = figure.subplots(1, 3)
    panels = (
        (loss_ax, "loss", (("train_loss", "train"), ("val_loss", "val"))),
        (acc_ax, "accuracy", (("train_acc", "train"), ("val_acc", "val"), ("ema_val_acc", "val (EMA)"))),
        (lr_ax, "learning rate", (("lr", "lr"),)),
    )
    for ax, title, series in panels:
        drawn = 0
        for key, label in series:
            xs, ys = _points(epochs, history, key)
            if xs:
                # Markers keep a one-epoch run (a single point) visible.
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
                drawn += 1
        if title == "accuracy":
            best = _best(epochs, history, "val_acc")
            if best is not None:
                ax.axvline(best[0], color="0.6", linestyle=":", linewidth=1)
                ax.set_title(f"accuracy (best val {best[1]:.4g} at epoch {best[0]})")
            else:
                ax.set_title(title)
        else:
            ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if drawn > 1:
            ax.legend()
        if not drawn:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="0.5")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _save(figure, path)


def plot_confusion_matrix(
    cm: Tensor,
    class_names: Sequence[str],
    path: str | Path,
    *,
    normalize: bool = True,
) -> Path:
    """An annotated heatmap of ``cm[true, predicted]``; rows are normalised to sum to 1 by default.

    The figure grows with the number of classes and the annotation font shrinks, so 5 to 20 classes
    stay legible; beyond 30 classes the cells are left unannotated (the colours still read). A class
    name with characters the installed fonts lack (CJK, emoji with matplotlib's default DejaVu Sans)
    is shown as its index, ``#3``, named in one logged line, instead of as empty boxes and a warning
    per missing character.
    """
    cm = torch.as_tensor(cm).detach().cpu()
    num_classes = len(class_names)
    if cm.ndim != 2 or cm.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix of shape {tuple(cm.shape)} does not fit {num_classes} class names")
    counts = cm.to(torch.float64)
    total = counts.sum().item()
    # Normalised, a class with no samples keeps an all-zero row rather than 0/0.
    values = counts / counts.sum(dim=1, keepdim=True).clamp_min(1) if normalize else counts

    side = max(5.0, 0.5 * num_classes + 2.5)
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    labels = [name if _drawable(name) else f"#{index}" for index, name in enumerate(class_names)]
    by_index = [f"{label} {name}" for label, name in zip(labels, class_names, strict=True) if label != name]
    if by_index:
        logger.warning(
            "%s: the installed fonts lack characters of %d class name(s), shown by index: %s",
            Path(path).name,
            len(by_index),
            ", ".join(by_index),
        )
    ax.set_xticks(range(num_classes), labels=labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(num_classes), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = counts.diagonal().sum().item() / total if total else math.nan
    ax.set_title(f"accuracy {accuracy:.2%} on {int(total)} images" + (" (rows normalised)" if normalize else ""))

    if num_classes <= 30:
        fontsize = 10 if num_classes <= 8 else 8 if num_classes <= 15 else 6
        threshold = 0.5 * (values.max().item() or 1.0)
        for row in range(num_classes):
            for col in range(num_classes):
                value = values[row, col].item()
                text = "0" if value == 0 else (f"{value:.2f}" if normalize else f"{int(value)}")
                color = "white" if value > threshold else "black"
                ax.text(col, row, text, ha="center", va="center", fontsize=fontsize, color=color)
    return _save(figure, path)


def _drawable(text: str) -> bool:
    """Whether the fonts matplotlib draws text with have a glyph for every character of ``text``."""
    characters = _font_characters(tuple(rcParams["font.family"]))
    return not characters or all(ord(char) in characters for char in text)  # no font found: cannot tell


@functools.lru_cache(maxsize=4)
def _font_characters(families: tuple[str, ...]) -> frozenset[int]:
    """The code points covered by the fonts matplotlib falls back through: the best match of each
    ``font.family`` entry (``sans-serif`` alone by default: DejaVu Sans)."""
    characters: set[int] = set()
    for family in families:
        try:
            font = font_manager.findfont(font_manager.FontProperties(family=[family]), fallback_to_default=False)
        except ValueError:  # none of the family's fonts is installed
            continue
        characters |= set(ft2font.FT2Font(font).get_charmap())
    return frozenset(characters)


def _points(epochs: list[Any], history: Sequence[dict[str, Any]], key: str) -> tuple[list[Any], list[float]]:
    xs, ys = [], []
    for epoch, record in zip(epochs, history, strict=True):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(epoch)
            ys.append(float(value))
    return xs, ys


def _best(epochs: list[Any], history: Sequence[dict[str, Any]], key: str) -> tuple[Any, float] | None:
    xs, ys = _points(epochs, history, key)
    if not ys:
        return None
    index = max(range(len(ys)), key=ys.__getitem__)
    return xs[index], ys[index]


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    # An explicit format: without a suffix matplotlib would append ".png" and the returned path would lie.
    figure.savefig(path, dpi=120, format=path.suffix.lstrip(".").lower() or "png")
    return path
