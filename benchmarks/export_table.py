"""Export a checkpoint to every format and precision, and measure each on a folder of photos.

    python benchmarks/export_table.py CHECKPOINT DATA_FOLDER [--out DIR] [--threads 1] [--max-images 500]

Writes ``export_table.md`` and ``export_table.csv`` (and the exported files) to ``--out``
(default ``outputs/export_table/``). One row per file plus PyTorch itself:

* size of the file on disk;
* CPU latency at batch 1: median of ``--runs`` timed calls after ``--warmup``, with a fixed thread
  count (``--threads``) for every runtime, on one preprocessed image (the runner's own NCHW->NHWC
  and int8 quantisation included, as an app pays them);
* top-1 accuracy on up to ``--max-images`` held-out photos, when the folder's class names match the
  checkpoint's;
* top-1 agreement with PyTorch and the maximum absolute logit difference, on the same photos.

DATA_FOLDER is the folder the model was trained on: it is split as training split it (the seed and
validation fraction stored in the checkpoint, or ``--split-seed`` / ``--val-fraction``), the rows are
scored on its validation part, and full-integer int8 is calibrated (and fp16's float16 weights
chosen) on ``--calib-images`` photos of its training part. One onnx2tf run serves all four TFLite
precisions.
"""

from __future__ import annotations

import argparse
import csv
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilevit_torch.export.errors import ConversionError, ExportError  # noqa: E402
from mobilevit_torch.export.exporter import pytorch_logits  # noqa: E402
from mobilevit_torch.export.images import load_images, pick_images, training_split  # noqa: E402
from mobilevit_torch.export.parity import compare  # noqa: E402
from mobilevit_torch.export.request import DEFAULT_OPSET  # noqa: E402
from mobilevit_torch.export.runtime import builtin_operators, open_runner  # noqa: E402
from mobilevit_torch.export.source import load_model, resolve_source  # noqa: E402
from mobilevit_torch.export.to_onnx import export_onnx  # noqa: E402
from mobilevit_torch.export.to_tflite import (  # noqa: E402
    PRECISIONS,
    convert_onnx_to_tflite,
    export_tflite_onnx,
    onnx2tf_sample,
)

logger = logging.getLogger("mobilevit_torch")

COLUMNS = [
    "format",
    "precision",
    "file",
    "size_mb",
    "latency_ms_median",
    "latency_ms_p90",
    "top1_accuracy",
    "agreement_with_pytorch",
    "max_abs_diff",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a mobilevit-torch training checkpoint (.pt)")
    parser.add_argument("folder", type=Path, help="the training photos, one sub-folder per class")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "export_table")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for every runtime")
    parser.add_argument("--runs", type=int, default=50, help="timed batch-1 calls per file")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-images", type=int, default=500, help="photos scored per file")
    parser.add_argument("--calib-images", type=int, default=100, help="photos that calibrate full int8")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--seed", type=int, default=0, help="which photos are picked")
    parser.add_argument("--split-seed", type=int, help="the training run's seed (default: the checkpoint's, else 0)")
    parser.add_argument("--val-fraction", type=float, help="the training run's (default: the checkpoint's, else 0.1)")
    args = parser.parse_args(argv)
    for name in ("threads", "runs", "max_images", "calib_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def latency_ms(run: Any, image: np.ndarray, *, runs: int, warmup: int) -> tuple[float, float]:
    """Median and 90th percentile of ``runs`` timed batch-1 calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run(image)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run(image)
        times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]


def make_row(
    fmt: str,
    precision: str,
    file: Path | None,
    logits: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray | None,
    latency: tuple[float, float],
) -> dict[str, Any]:
    report = compare(reference, logits, precision=precision, real_images=True)
    return {
        "format": fmt,
        "precision": precision,
        "file": file.name if file else "",
        "size_mb": round(file.stat().st_size / 1e6, 2) if file else None,
        "latency_ms_median": round(latency[0], 2),
        "latency_ms_p90": round(latency[1], 2),
        "top1_accuracy": None if labels is None else round(float((logits.argmax(1) == labels).mean()), 4),
        "agreement_with_pytorch": round(report.top1_agreement, 4),
        "max_abs_diff": float(f"{report.max_abs_diff:.3g}"),
    }


def fp16_note(report: dict[str, Any] | None) -> str:
    if not report:
        return "n/a"
    kept = report["float32_tensors_kept"]
    return (
        f"{report['float16_tensors']} weight tensors in float16, {kept} kept in float32 "
        f"({report['float32_bytes_kept'] / 1e3:.1f} kB) to stay within {report['budget']:.1e} of fp32 on "
        f"{report['probe_images']} training photos"
    )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(rows: list[dict[str, Any]], notes: list[str]) -> str:
    header = (
        "| format | precision | file size | latency b1 (median / p90) | top-1 accuracy | agreement | max abs diff |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = f"{r['size_mb']:.2f} MB" if r["size_mb"] is not None else "–"
        acc = f"{r['top1_accuracy']:.1%}" if r["top1_accuracy"] is not None else "n/a"
        lines.append(
            f"| {r['format']} | {r['precision']} | {size} | {r['latency_ms_median']:.1f} / {r['latency_ms_p90']:.1f} ms"
            f" | {acc} | {r['agreement_with_pytorch']:.1%} | {r['max_abs_diff']:.2e} |"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    try:
        return run(args)
    except (ExportError, ConversionError, OSError, ValueError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    source = resolve_source(checkpoint=args.checkpoint, model=None, pretrained=None, num_classes=None)
    model = load_model(source)
    pre = model.preprocessing
    split = training_split(source.training_config)
    if args.split_seed is not None:
        split["split_seed"] = args.split_seed
    if args.val_fraction is not None:
        split["val_fraction"] = args.val_fraction
    picked = pick_images(
        args.folder, calib_images=args.calib_images, check_images=args.max_images, seed=args.seed, **split
    )
    images, folder_labels = load_images(picked.check, pre)
    calibration, _ = load_images(picked.calibration, pre)
    folder_classes = picked.class_names
    model_classes = list(model.class_names or [])
    labels = None
    if model_classes and set(folder_classes) <= set(model_classes):
        # folder label -> the model's index of the same class name
        labels = np.array([model_classes.index(folder_classes[label]) for label in folder_labels])
    logger.info("scoring %d held-out photos; calibrating on %d training photos", len(images), len(calibration))

    args.out.mkdir(parents=True, exist_ok=True)
    stem = source.model_name
    onnx_file = args.out / f"{stem}_fp32.onnx"
    tflite_files = {p: args.out / f"{stem}_{p}.tflite" for p in PRECISIONS}

    started = time.perf_counter()
    export_onnx(model, onnx_file, img_size=pre.input_size, opset=args.opset)
    onnx_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="mobilevit_table_") as tmp:
        static = export_tflite_onnx(model, Path(tmp) / "model.onnx", img_size=pre.input_size, opset=args.opset)
        info = convert_onnx_to_tflite(
            static,
            tflite_files,
            sample=onnx2tf_sample(images[:20]),
            calibration=calibration.permute(0, 2, 3, 1).numpy(),  # [N, 3, S, S] -> [N, S, S, 3]
        )
    for file in tflite_files.values():
        builtin_operators(file)
    logger.info(
        "exports: onnx %.0f s, onnx2tf %.0f s, tflite %s", onnx_seconds, info["onnx2tf_seconds"], info["tflite_seconds"]
    )

    torch.set_num_threads(args.threads)
    reference = pytorch_logits(model, images)
    one = images[:1]
    with torch.no_grad():
        torch_latency = latency_ms(model, one, runs=args.runs, warmup=args.warmup)
    rows = [make_row("pytorch", "fp32", None, reference, reference, labels, torch_latency)]
    for fmt, precision, file in [("onnx", "fp32", onnx_file), *(("tflite", p, f) for p, f in tflite_files.items())]:
        runner = open_runner(file, threads=args.threads)
        logits = runner(images.numpy())
        latency = latency_ms(runner, one.numpy(), runs=args.runs, warmup=args.warmup)
        rows.append(make_row(fmt, precision, file, logits, reference, labels, latency))
        logger.info("%s %s: %s", fmt, precision, rows[-1])

    notes = [
        f"checkpoint `{args.checkpoint.name}` ({source.model_name}, {pre.input_size} px), "
        f"scored on {len(images)} held-out photos of `{args.folder.name}` ({len(folder_classes)} classes, "
        f"split seed {split.get('split_seed', 0)}, validation fraction {split.get('val_fraction', 0.1)}); "
        f"int8 calibrated on {len(calibration)} of its training photos",
        f"fp16: {fp16_note(info.get('fp16_weights'))}",
        f"latency: batch 1, {args.threads} thread(s), median and p90 of {args.runs} runs after {args.warmup} warm-up; "
        f"{cpu_name()}",
        f"torch {torch.__version__}, onnx2tf {info['onnx2tf']}, tensorflow {info['tensorflow']}, opset {args.opset}",
    ]
    if labels is None:
        notes.append("accuracy n/a: the folder's class names are not the checkpoint's")
    table = markdown(rows, notes)
    (args.out / "export_table.md").write_text(table)
    with open(args.out / "export_table.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(table)
    print(f"wrote {args.out / 'export_table.md'} and {args.out / 'export_table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
