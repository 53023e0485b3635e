"""Per-epoch metrics written to ``metrics.csv``, ``metrics.jsonl`` and TensorBoard in the run folder.

CSV is for a spreadsheet or ``pandas.read_csv``; JSON lines is the lossless record a resumed run
reads back; TensorBoard is for watching a run live. One ``log_epoch`` call writes all three, and
each file is complete after every epoch, so a crash loses at most the epoch in flight.
:func:`epoch_line` and :func:`summary_line` are the same records as one line of the training log,
which :func:`add_log_file` also copies into the run folder's ``train.log``.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

from mobilevit_torch.files import atomic_write

logger = logging.getLogger("mobilevit_torch")

Record = dict[str, Any]


class RunLogger:
    """Appends one record per epoch to ``run_dir``'s metrics files and TensorBoard event log.

    Args:
        run_dir: the run's output folder (created if needed).
        tensorboard: also write every numeric value as a scalar to ``run_dir / "tensorboard"``
            (tag = the key, step = the record's ``epoch``).
        resume: keep the records already in ``run_dir / "metrics.jsonl"`` and append after them.
            Without it a fresh run replaces any metrics files left in ``run_dir``.
        history: with ``resume``, the records to start from instead of the file's: the resumed
            checkpoint's own, which also hold where ``last.pt`` was copied into a folder without
            the run's metrics files (or beside records of a later, abandoned stretch of the run).

    Every record needs an integer ``epoch``. Logging an epoch that is already recorded replaces
    that record and all later ones: a run resumed from an earlier checkpoint redoes those epochs,
    and its history must not hold both versions. TensorBoard events from those epochs on are
    purged the same way (``SummaryWriter(purge_step=...)``).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = True,
        resume: bool = False,
        history: list[Record] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.tensorboard_dir = self.run_dir / "tensorboard"
        self._tensorboard = tensorboard
        self._writer: Any = None  # created at the first record, whose epoch is the purge step
        self._records: list[Record] = []
        self._fields: list[str] = []
        if resume:
            self._records = [dict(r) for r in history] if history is not None else _read_jsonl(self.jsonl_path)
            self._fields = _union_fields(self._records)
        if self._records:
            # Rewrite from the JSON lines so a CSV left behind by a crash mid-write matches them.
            self._rewrite()
        else:
            self.csv_path.unlink(missing_ok=True)
            self.jsonl_path.unlink(missing_ok=True)

    @property
    def history(self) -> list[Record]:
        """Copies of the records logged so far (including those read back on resume), oldest first."""
        return [dict(record) for record in self._records]

    def log_epoch(self, record: dict[str, float | int | str | None]) -> None:
        """Write one epoch's record to the CSV, the JSON lines and TensorBoard."""
        record = {str(key): _plain(key, value) for key, value in record.items()}
        epoch = record.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(f"a metrics record needs an integer 'epoch', got {epoch!r}")

        replaced = [r for r in self._records if r["epoch"] >= epoch]
        new_fields = [key for key in record if key not in self._fields]
        if replaced:
            logger.info("metrics from epoch %d on are replaced by this run's (%d records)", epoch, len(replaced))
            self._records = [r for r in self._records if r["epoch"] < epoch]
        self._records.append(record)
        self._fields += new_fields
        if replaced or (new_fields and len(self._records) > 1):
            self._rewrite()
        else:
            self._append(record)
        self._log_tensorboard(record)

    def close(self) -> None:
        """Flush and close the TensorBoard writer; the CSV and JSON lines are already on disk."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _append(self, record: Record) -> None:
        first = len(self._records) == 1  # the files were removed or never existed: start them
        with self.csv_path.open("w" if first else "a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self._fields)
            if first:
                writer.writeheader()
            writer.writerow(record)
        with self.jsonl_path.open("w" if first else "a") as file:
            file.write(json.dumps(record) + "\n")

    def _rewrite(self) -> None:
        """Write both files from scratch (a new column, or replaced epochs), each atomically."""
        with atomic_write(self.csv_path, newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self._fields)
            writer.writeheader()
            writer.writerows(self._records)
        with atomic_write(self.jsonl_path) as file:
            file.writelines(json.dumps(record) + "\n" for record in self._records)

    def _log_tensorboard(self, record: Record) -> None:
        if not self._tensorboard:
            return
        if self._writer is None:
            # purge_step hides events a previous (crashed or resumed) run wrote for these epochs.
            self._writer = _summary_writer_class()(log_dir=str(self.tensorboard_dir), purge_step=record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, global_step=record["epoch"])
        self._writer.flush()


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One epoch's record as the line the training log shows for it."""
    ema = f" | ema {100 * record['ema_val_acc']:.1f}%" if record.get("ema_val_acc") is not None else ""
    return (
        f"epoch {record['epoch']}/{epochs} | train loss {record['train_loss']:.3f} "
        f"acc {100 * record['train_acc']:.1f}% | val loss {record['val_loss']:.3f} "
        f"acc {100 * record['val_acc']:.1f}%{ema} | lr {record['lr']:.2e} | "
        f"{_rate(record['images_per_s'])} img/s | {record['epoch_time_s']:.1f} s"
    )


def _rate(value: float) -> str:
    """Images per second: whole numbers from 100 up, three significant digits below (``0.43``, not ``0``)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def summary_line(summary: dict[str, Any]) -> str:
    """A run's summary as the training log's last line."""
    if "best_val_acc" not in summary:
        return f"no epoch finished; outputs in {summary['run_dir']}"
    ema = summary.get("last_ema_val_acc")
    ema_text = f", last EMA {100 * ema:.2f}%" if ema is not None else ""
    return (
        f"done: best val acc {100 * summary['best_val_acc']:.2f}% (epoch {summary['best_epoch']}, "
        f"{summary['best_weights']} weights), last {100 * summary['last_val_acc']:.2f}%{ema_text}; "
        f"{summary['wall_time_s']:.0f} s; outputs in {summary['run_dir']}"
    )


_PACKAGE_LOGGER = logging.getLogger("mobilevit_torch")  # train.log takes every module's records


class _RunFileHandler(logging.FileHandler):
    """The run directory's train.log; removed when train() returns."""


def add_log_file(path: Path) -> None:
    """Copy the package's log records of INFO and up into ``path`` (the run's ``train.log``)."""
    handler = _RunFileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    if _PACKAGE_LOGGER.getEffectiveLevel() > logging.INFO:  # the run log records epochs even when nobody
        _PACKAGE_LOGGER.setLevel(logging.INFO)  # configured logging (library use, tests)
    _PACKAGE_LOGGER.addHandler(handler)


def remove_log_files() -> None:
    """Close and detach every log file :func:`add_log_file` opened."""
    for handler in [h for h in _PACKAGE_LOGGER.handlers if isinstance(h, _RunFileHandler)]:
        _PACKAGE_LOGGER.removeHandler(handler)
        handler.close()


def _summary_writer_class() -> Any:
    """torch's ``SummaryWriter``, without importing TensorFlow.

    TensorBoard imports TensorFlow whenever it is installed (the ``export`` extra installs it), which
    took 2.6-7.8 s of a training run here, although writing scalars to an event file needs none of
    it. TensorBoard's own switch for its TensorFlow-free stub (its ``no_tensorflow`` build) is the
    presence of the module ``tensorboard.compat.notf``; it is set only when TensorFlow is not loaded
    already, and affects only TensorBoard's internal choice."""
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


def _plain(key: object, value: Any) -> Any:
    """Numbers, strings and None as they are; 0-d tensors and numpy scalars as Python numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    raise TypeError(f"metric {key!r} must be a number, a string or None, got {type(value).__name__}")


def _read_jsonl(path: Path) -> list[Record]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # Typically the last line of a run killed mid-write.
            logger.warning("%s line %d is not valid JSON and is dropped", path, number)
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    return records


def _union_fields(records: list[Record]) -> list[str]:
    fields: dict[str, None] = {}
    for record in records:
        fields.update(dict.fromkeys(record))
    return list(fields)
