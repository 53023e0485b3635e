"""Metrics against hand-computed values, plots as real PNGs, and the run logger's CSV, JSON lines and TensorBoard."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from mobilevit_torch.metrics import (
    accuracy_from_confusion,
    confusion_matrix,
    per_class_accuracy,
    topk_correct,
)
from mobilevit_torch.training.plots import plot_confusion_matrix, plot_curves
from mobilevit_torch.training.run_log import RunLogger
from tests.conftest import REPO

# (true, predicted): (0,0) (1,1) (1,2) (2,2) (2,1) (0,0) (0,2)
PREDS = torch.tensor([0, 1, 2, 2, 1, 0, 2])
TARGETS = torch.tensor([0, 1, 1, 2, 2, 0, 0])
EXPECTED = [
    [2, 0, 1],
    [0, 1, 1],
    [0, 1, 1],
]


def test_confusion_matrix_matches_hand_count() -> None:
    cm = confusion_matrix(PREDS, TARGETS, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == EXPECTED
    assert accuracy_from_confusion(cm) == pytest.approx(4 / 7)
    assert per_class_accuracy(cm) == pytest.approx([2 / 3, 1 / 2, 1 / 2])


def test_confusion_matrix_accepts_any_shape_and_int_dtype() -> None:
    cm = confusion_matrix(PREDS.int().reshape(7, 1), TARGETS.to(torch.uint8), 3)
    assert cm.tolist() == EXPECTED


@pytest.mark.parametrize(("preds", "targets"), [([0, 3], [1, 0]), ([0, -1], [0, 1]), ([0, 1], [0, 5])])
def test_confusion_matrix_rejects_out_of_range_ids(preds: list[int], targets: list[int]) -> None:
    # pred 3 with target 1 would silently land in cell [2, 0] of a flattened 3x3 count.
    bad = [i for i in preds + targets if not 0 <= i < 3]
    with pytest.raises(ValueError, match=re.escape(f"class ids {bad} are outside [0, 3)")):
        confusion_matrix(torch.tensor(preds), torch.tensor(targets), 3)


def test_confusion_matrix_rejects_float_predictions_and_size_mismatch() -> None:
    with pytest.raises(ValueError, match="argmax"):
        confusion_matrix(torch.rand(4, 3), torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="7 elements but targets has 6"):
        confusion_matrix(PREDS, TARGETS[:6], 3)


def test_per_class_accuracy_gives_nan_for_a_class_without_samples() -> None:
    cm = confusion_matrix(PREDS, TARGETS, 4)  # class 3 never occurs
    assert cm.shape == (4, 4)
    accuracies = per_class_accuracy(cm)
    assert accuracies[:3] == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert math.isnan(accuracies[3])
    assert math.isnan(accuracy_from_confusion(torch.zeros(3, 3, dtype=torch.long)))


def test_topk_correct_counts_targets_among_the_k_largest() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.5],  # order 1, 3, 0, 2
            [0.8, 0.1, 0.7, 0.0],  # order 0, 2, 1, 3
            [0.0, 0.2, 0.3, 0.1],  # order 2, 1, 3, 0
        ]
    )
    targets = torch.tensor([3, 0, 0])
    assert topk_correct(logits, targets, 1).item() == 1
    assert topk_correct(logits, targets, 2).item() == 2
    assert topk_correct(logits, targets, 4).item() == 3
    assert topk_correct(logits, targets, 1).dtype == torch.int64
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        topk_correct(logits, targets, 5)


def _assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_plot_curves_writes_png_with_missing_and_none_values(tmp_path: Path) -> None:
    history = [
        {"epoch": 0, "train_loss": 1.2, "val_loss": 1.1, "train_acc": 0.4, "val_acc": 0.45, "lr": 1e-4},
        {
            "epoch": 1,
            "train_loss": 0.9,
            "val_loss": 0.95,
            "train_acc": 0.6,
            "val_acc": 0.55,
            "ema_val_acc": None,
            "lr": 2e-3,
        },
        {
            "epoch": 2,
            "train_loss": 0.7,
            "val_loss": float("nan"),
            "train_acc": 0.7,
            "val_acc": 0.65,
            "ema_val_acc": 0.6,
            "lr": 1e-3,
        },
    ]
    path = plot_curves(history, tmp_path / "nested" / "curves.png")
    assert path == tmp_path / "nested" / "curves.png"
    _assert_png(path)
    # A single epoch (the first call of a run) must plot too.
    _assert_png(plot_curves(history[:1], tmp_path / "one.png"))
    with pytest.raises(ValueError, match="empty"):
        plot_curves([], tmp_path / "none.png")


def test_plot_confusion_matrix_scales_with_classes(tmp_path: Path) -> None:
    small = confusion_matrix(PREDS, TARGETS, 5)  # classes 3, 4 have no samples: zero rows, no 0/0
    small_size = _assert_png(plot_confusion_matrix(small, [f"class {i}" for i in range(5)], tmp_path / "a" / "5.png"))
    g = torch.Generator().manual_seed(0)
    preds, targets = torch.randint(0, 20, (500,), generator=g), torch.randint(0, 20, (500,), generator=g)
    big = confusion_matrix(preds, targets, 20)
    names = [f"a rather long class name {i}" for i in range(20)]
    big_size = _assert_png(plot_confusion_matrix(big, names, tmp_path / "20.png", normalize=False))
    assert big_size[0] > small_size[0] and big_size[1] > small_size[1]
    # No suffix: still a PNG, at exactly the path asked for.
    _assert_png(plot_confusion_matrix(small, [str(i) for i in range(5)], tmp_path / "bare"))
    with pytest.raises(ValueError, match="does not fit 4 class names"):
        plot_confusion_matrix(small, ["a", "b", "c", "d"], tmp_path / "bad.png")


def test_class_names_the_fonts_cannot_draw_are_shown_by_index_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DejaVu Sans (matplotlib's default, always there) has no CJK or emoji: no warning per missing glyph."""
    import matplotlib

    names = ["玫瑰", "daisy", "🌷 tulip", "Émile"]
    with matplotlib.rc_context({"font.family": ["DejaVu Sans"]}), warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" would fail here
        _assert_png(plot_confusion_matrix(torch.eye(4, dtype=torch.long), names, tmp_path / "cm.png"))
    assert [r.getMessage() for r in caplog.records] == [
        "cm.png: the installed fonts lack characters of 2 class name(s), shown by index: #0 玫瑰, #2 🌷 tulip"
    ]


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_run_logger_writes_csv_jsonl_and_tensorboard_with_header_union(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunLogger(run) as log:
        log.log_epoch({"epoch": 0, "train_loss": 1.5, "val_acc": 0.25, "lr": 0.001})
        log.log_epoch({"epoch": 1, "train_loss": 1.0, "val_acc": 0.5, "lr": 0.002})
        log.log_epoch({"epoch": 2, "train_loss": 0.5, "val_acc": 0.75, "lr": 0.001, "ema_val_acc": 0.7})
        log.log_epoch({"epoch": 3, "train_loss": 0.4, "val_acc": 0.8, "lr": 0.0005, "ema_val_acc": None})
        history = log.history
        history[0]["train_loss"] = 99.0  # a copy: must not change the logger's record
        assert log.history[0]["train_loss"] == 1.5

    header, rows = _csv_rows(run / "metrics.csv")
    assert header == ["epoch", "train_loss", "val_acc", "lr", "ema_val_acc"]
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3"]
    assert rows[0]["ema_val_acc"] == "" and rows[2]["ema_val_acc"] == "0.7" and rows[3]["ema_val_acc"] == ""
    assert float(rows[1]["train_loss"]) == 1.0
    records = _jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert "ema_val_acc" not in records[0] and records[3]["ema_val_acc"] is None
    assert _scalars(run, "val_acc") == [(0, 0.25), (1, 0.5), (2, 0.75), (3, pytest.approx(0.8))]
    assert _scalars(run, "ema_val_acc") == [(2, pytest.approx(0.7))]


def test_tensorboard_logging_does_not_import_tensorflow(tmp_path: Path) -> None:
    """TensorBoard would import TensorFlow (seconds) whenever it is installed; event files need none of it."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed here: there is nothing to keep out")
    run = tmp_path / "run"
    code = (
        "import sys\n"
        "from mobilevit_torch.training.run_log import RunLogger\n"
        "with RunLogger(sys.argv[1]) as log:\n"
        "    log.log_epoch({'epoch': 1, 'val_acc': 0.5})\n"
        "print('tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(run)], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "False", result.stderr[-2000:]
    assert _scalars(run, "val_acc") == [(1, 0.5)]


def test_run_logger_resume_appends_and_replaces_redone_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # TensorBoard reads a folder's event files in name order: <second>.<host>.<pid>.<process-wide counter>.
    # The three loggers below write within one second of one process, so their files must sort by the
    # counter, which as text misorders 9 and 10 (earlier tests move it): start it where it has 7 digits.
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(1_000_000))
    run = tmp_path / "run"
    with RunLogger(run) as log:
        for epoch in range(3):
            log.log_epoch({"epoch": epoch, "val_acc": 0.1 * epoch, "train_loss": torch.tensor(2.0 - epoch)})

    with RunLogger(run, resume=True) as log:
        assert [r["epoch"] for r in log.history] == [0, 1, 2]
        log.log_epoch({"epoch": 3, "val_acc": 0.3, "train_loss": -1.0})
    assert [r["epoch"] for r in _jsonl(run / "metrics.jsonl")] == [0, 1, 2, 3]
    assert [row["epoch"] for row in _csv_rows(run / "metrics.csv")[1]] == ["0", "1", "2", "3"]

    # Resumed from the epoch-1 checkpoint: epochs 2 and 3 are redone and replace the old records.
    with RunLogger(run, resume=True) as log:
        log.log_epoch({"epoch": 2, "val_acc": 0.9, "train_loss": 0.0})
        assert [(r["epoch"], r["val_acc"]) for r in log.history] == [(0, 0.0), (1, 0.1), (2, 0.9)]
    assert [(r["epoch"], r["val_acc"]) for r in _jsonl(run / "metrics.jsonl")] == [(0, 0.0), (1, 0.1), (2, 0.9)]
    assert [row["val_acc"] for row in _csv_rows(run / "metrics.csv")[1]] == ["0.0", "0.1", "0.9"]
    # TensorBoard purges the old epochs 2 and 3 as well.
    assert _scalars(run, "val_acc") == [(0, 0.0), (1, pytest.approx(0.1)), (2, pytest.approx(0.9))]
    # The last epoch alone redone (stopped while saving it): its record is replaced, not written twice.
    with RunLogger(run, resume=True, tensorboard=False) as log:
        log.log_epoch({"epoch": 2, "val_acc": 0.8, "train_loss": 0.0})
    assert [(r["epoch"], r["val_acc"]) for r in _jsonl(run / "metrics.jsonl")] == [(0, 0.0), (1, 0.1), (2, 0.8)]
    assert [row["val_acc"] for row in _csv_rows(run / "metrics.csv")[1]] == ["0.0", "0.1", "0.8"]

    # A fresh (not resumed) logger in the same folder starts the files over.
    with RunLogger(run, tensorboard=False) as log:
        log.log_epoch({"epoch": 0, "val_acc": 0.5})
    assert _jsonl(run / "metrics.jsonl") == [{"epoch": 0, "val_acc": 0.5}]
    assert _csv_rows(run / "metrics.csv") == (["epoch", "val_acc"], [{"epoch": "0", "val_acc": "0.5"}])


def test_run_logger_rejects_bad_records_and_can_skip_tensorboard(tmp_path: Path) -> None:
    log = RunLogger(tmp_path / "run", tensorboard=False)
    with pytest.raises(ValueError, match="integer 'epoch'"):
        log.log_epoch({"val_acc": 0.5})
    with pytest.raises(TypeError, match="'per_class'"):
        log.log_epoch({"epoch": 0, "per_class": [0.1, 0.2]})
    log.log_epoch({"epoch": 0, "val_acc": 0.5})
    log.close()
    log.close()  # idempotent
    assert (tmp_path / "run" / "metrics.csv").is_file()
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_run_logger_resume_drops_a_half_written_last_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunLogger(run, tensorboard=False) as log:
        log.log_epoch({"epoch": 0, "val_acc": 0.5})
    with (run / "metrics.jsonl").open("a") as file:
        file.write('{"epoch": 1, "val_a')  # killed mid-write
    with RunLogger(run, resume=True, tensorboard=False) as log:
        assert log.history == [{"epoch": 0, "val_acc": 0.5}]
        log.log_epoch({"epoch": 1, "val_acc": 0.6})
    assert [r["epoch"] for r in _jsonl(run / "metrics.jsonl")] == [0, 1]
