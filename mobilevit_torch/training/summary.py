"""A run's summary (``summary.json``, the plots, the closing log line) and whether a folder holds a run."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from mobilevit_torch.checkpoint import load_checkpoint
from mobilevit_torch.metrics import per_class_accuracy
from mobilevit_torch.training.config import TrainConfig
from mobilevit_torch.training.data_setup import TrainData
from mobilevit_torch.training.run_log import summary_line

logger = logging.getLogger("mobilevit_torch.train")


def report(
    config: TrainConfig,
    run_dir: Path,
    data: TrainData,
    class_names: list[str],
    history: list[dict[str, Any]],
    best: dict[str, Any],
    best_confusion: Tensor | None,
    timing: dict[str, float],
    *,
    write: bool,
) -> dict[str, Any]:
    """The run's summary; with ``write`` (the main process, once an epoch was recorded) also
    ``summary.json``, the plots and the closing log line."""
    summary = {
        "run_dir": str(run_dir),
        "model": config.model.name,
        "epochs": len(history),
        "train_images": data.num_train,
        "val_images": data.num_val,
        "skipped_files": [list(s) for s in data.skipped],
        **timing,
    }
    if not history:
        return summary
    last = history[-1]
    summary.update(
        best_val_acc=best["val_acc"],
        best_epoch=best["epoch"],
        best_weights=best["weights"],
        last_val_acc=last["val_acc"],
        last_ema_val_acc=last.get("ema_val_acc"),
        mean_images_per_s=sum(r["images_per_s"] for r in history) / len(history),
    )
    if not write:
        return summary
    if best_confusion is None and (run_dir / "best.pt").exists():
        best_confusion = load_checkpoint(run_dir / "best.pt").get("confusion")
    if best_confusion is not None:
        accuracies = per_class_accuracy(best_confusion.cpu())
        # null, not NaN (invalid JSON), for a class without validation images
        summary["per_class_accuracy"] = {
            name: None if math.isnan(accuracy) else accuracy
            for name, accuracy in zip(class_names, accuracies, strict=True)
        }
        summary["confusion_matrix"] = best_confusion.cpu().tolist()
    if config.plots:
        from mobilevit_torch.training.plots import plot_confusion_matrix, plot_curves

        plot_curves(history, run_dir / "curves.png")
        if best_confusion is not None:
            plot_confusion_matrix(best_confusion.cpu(), class_names, run_dir / "confusion_matrix.png")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info(summary_line(summary))
    return summary


RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "summary.json")


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run's checkpoints or metrics (split.json and logs alone do not count)."""
    return any((run_dir / name).exists() for name in RUN_FILES)


def finished_run(run_dir: Path, done: int, epochs: int, *, say: bool = True) -> dict[str, Any]:
    """A resumed run with nothing left to train: its summary, its files untouched (``say``: log why)."""
    if say:
        logger.warning(
            "the run in %s already finished %d epoch(s) (epochs=%d): nothing to train; pass epochs=N with N > %d "
            "to train longer",
            run_dir,
            done,
            epochs,
            done,
        )
    with contextlib.suppress(OSError, ValueError):
        return json.loads((run_dir / "summary.json").read_text())
    return {"run_dir": str(run_dir), "epochs": done}
