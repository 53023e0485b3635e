"""End-to-end training speed: ``train.py`` runs on a photo folder, timed from its own records.

Each variant is one ``python train.py ...`` run (default recipe unless overridden) in its own
folder; the table reads back ``summary.json``, ``metrics.jsonl`` and ``train.log``: set-up time
(split, decode cache, model), the whole loop's time and images per second (training steps,
validation of model and EMA, checkpoints, logs), the first epoch (which includes the CUDA-graph
captures: their number, warm-up and capture seconds), the median later epoch split into training
and validation, the loop's time outside the epochs per epoch (handing
over checkpoints, writing logs), and the best validation accuracy.

    python benchmarks/train_e2e.py --root data/flowers --epochs 30 \\
        --variant graphs= --variant eager=cuda_graphs=false --out e2e

``--variant NAME=OVERRIDES`` (comma-separated Hydra overrides, may be empty) can repeat; extra
arguments after ``--`` go to every run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from script_checks import positive_int  # noqa: E402

# TrainStep's and GraphedForward's log lines: "... as a CUDA graph (...): 3.2 s of warm-up ..., 0.4 s to capture"
CAPTURE = re.compile(r"captured .* as a CUDA graph .*: ([\d.]+) s of warm-up .*, ([\d.]+) s to capture")


def capture_times(log: str) -> dict[str, float]:
    """CUDA-graph captures in a run's train.log: how many, and their warm-up and capture seconds in all.

    The warm-up calls hold epoch 1's one-time costs (cuDNN's algorithm search, lazy CUDA module
    loading, compilation), so with the capture seconds they say where epoch 1's extra time went."""
    found = [(float(warm), float(capture)) for warm, capture in CAPTURE.findall(log)]
    return {
        "captures": len(found),
        "capture_warmup_s": sum(warm for warm, _ in found),
        "capture_s": sum(capture for _, capture in found),
    }


def run_variant(name: str, overrides: list[str], args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    run_dir = (args.out / name).resolve()
    command = [
        sys.executable,
        str(REPO / "train.py"),
        f"model={args.model}",
        "data=flowers",
        f"data.root={args.root}",
        f"epochs={args.epochs}",
        "plots=false",
        "progress=false",
        f"hydra.run.dir={run_dir}",
        *overrides,
        *extra,
    ]
    print("$", " ".join(command), flush=True)
    begin = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=os.environ.copy(), text=True, capture_output=True)
    wall = time.perf_counter() - begin
    (args.out / f"{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        print(result.stderr[-3000:], flush=True)
        return {"variant": name, "status": f"failed (exit {result.returncode})", "process_s": wall}
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    later = records[1:] or records
    return {
        "variant": name,
        "status": "ok",
        "overrides": " ".join(overrides),
        "process_s": wall,
        "setup_s": summary["setup_time_s"],
        "loop_s": summary["loop_time_s"],
        "loop_img_s": summary["loop_images_per_s"],
        "first_epoch_s": records[0]["epoch_time_s"],
        "epoch_s": statistics.median(r["epoch_time_s"] for r in later),
        "train_img_s": statistics.median(r["images_per_s"] for r in later),
        "val_s": statistics.median(r["val_time_s"] for r in later),
        # Checkpoints, metrics files, TensorBoard, console: what the loop does between epochs.
        "between_epochs_s": (summary["loop_time_s"] - sum(r["epoch_time_s"] for r in records)) / len(records),
        **capture_times((run_dir / "train.log").read_text()),
        "best_val_acc": summary["best_val_acc"],
        "epochs": summary["epochs"],
        "train_images": summary["train_images"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| variant | process s | setup s | loop s | loop img/s | epoch 1 s | graph captures: n, warm-up s, capture s "
        "| later epoch s | train img/s | val s | between epochs s | best val acc |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | {r['process_s']:.0f} | {r['status']} |" + " |" * 9)
            continue
        lines.append(
            f"| {r['variant']} | {r['process_s']:.1f} | {r['setup_s']:.1f} | {r['loop_s']:.1f} | "
            f"{r['loop_img_s']:,.0f} | {r['first_epoch_s']:.2f} | "
            f"{r['captures']}, {r['capture_warmup_s']:.1f}, {r['capture_s']:.1f} | {r['epoch_s']:.3f} | "
            f"{r['train_img_s']:,.0f} | {r['val_s']:.3f} | {r['between_epochs_s']:.3f} | "
            f"{100 * r['best_val_acc']:.2f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="photo folder (class sub-folders)")
    parser.add_argument("--model", default="xxs", help="train.py's model=: xxs, xs or s (default xxs)")
    parser.add_argument("--epochs", type=positive_int, default=30, help="(default 30)")
    parser.add_argument("--variant", action="append", default=None, help="NAME=override,override (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("e2e"), help="folder for the runs and tables (default e2e)")
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        raise SystemExit(f"train_e2e.py: --root: no such folder: {args.root}")
    args.root = str(Path(args.root).resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    variants = args.variant or ["default="]
    rows = []
    for spec in variants:
        name, _, text = spec.partition("=")
        rows.append(run_variant(name, [o for o in text.split(",") if o], args, extra))
        print(table(rows[-1:]), flush=True)
    text = table(rows)
    print("\n" + text)
    (args.out / "train_e2e.json").write_text(json.dumps(rows, indent=2))
    (args.out / "train_e2e.md").write_text(text + "\n")
    print(f"wrote {args.out / 'train_e2e.json'} and train_e2e.md")
    failed = [row["variant"] for row in rows if str(row.get("status", "")).startswith("failed")]
    if failed:
        raise SystemExit(f"train_e2e.py: {len(failed)} of {len(rows)} variant(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
