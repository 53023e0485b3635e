"""Score a training checkpoint or an exported file on a folder of labelled images (one sub-folder per class).

    python evaluate.py outputs/<run>/best.pt path/to/test_photos [--batch-size 64] [--device auto] [--output DIR]
    python evaluate.py model.tflite path/to/test_photos     # what export.py wrote, run as an app runs it

Prints accuracy, top-5 accuracy (five classes or more) and a per-class table, and writes
``confusion_matrix.png`` and ``eval.json`` to ``--output`` (default: ``eval_<folder>/`` next to the
checkpoint, ``eval_<folder>_<file>/`` next to an exported file). Class folders are matched to the
model's classes by name. User mistakes end with one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mobilevit_torch.cli import non_negative_int, one_line, positive_int, start_inference_script


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="a mobilevit-torch training checkpoint (.pt), or a .onnx / .tflite file export.py wrote (run on the "
        "CPU as an app runs it, with the class names and preprocessing of its sidecar <file>.json)",
    )
    parser.add_argument("data_dir", type=Path, help="folder with one sub-folder of images per class")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--workers", type=non_negative_int, default=2, help="image-decoding worker processes (0: none)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--output", type=Path, default=None, help="where to write the plot and eval.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (code := start_inference_script(args.checkpoint, args.device)) is not None:
        return code
    # Imported only now, so --help and the early errors answer without loading torch (seconds).
    from tqdm.contrib.logging import logging_redirect_tqdm

    from mobilevit_torch.evaluation import USER_ERRORS, evaluate_folder, load_model_from_checkpoint, resolve_device
    from mobilevit_torch.export.classifier import exported_device, is_exported, load_exported
    from mobilevit_torch.export.errors import ExportError
    from mobilevit_torch.training.plots import plot_confusion_matrix

    data_name = args.data_dir.expanduser().resolve().name
    # An export's report is kept apart from its checkpoint's (the comparison a user makes) when they share a folder.
    default = f"eval_{data_name}_{args.checkpoint.name}" if is_exported(args.checkpoint) else f"eval_{data_name}"
    output = (args.output or args.checkpoint.expanduser().parent / default).expanduser()
    created = not output.exists()
    try:
        if is_exported(args.checkpoint):
            device, model = exported_device(args.device), load_exported(args.checkpoint)
        else:
            device, model = resolve_device(args.device), load_model_from_checkpoint(args.checkpoint)
        check_output_folder(output)  # before the scoring, which can take a while
        with logging_redirect_tqdm():  # a skipped-image warning prints above the progress bar, not into it
            result = evaluate_folder(
                model,
                args.data_dir,
                batch_size=args.batch_size,
                num_workers=args.workers,
                device=device,
                progress=not args.no_progress,
            )
    except (*USER_ERRORS, ExportError, KeyboardInterrupt) as error:
        if created and output.is_dir() and not any(output.iterdir()):
            output.rmdir()  # made above for nothing
        if isinstance(error, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return 130
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2

    # The results first: a file that cannot be written afterwards must not cost the report.
    skipped = f"; {len(result.skipped)} unreadable file(s) skipped" if result.skipped else ""
    print(f"model     {model.model_name} from {args.checkpoint}")
    print(f"data      {args.data_dir} ({result.num_images} image(s), {len(result.per_class)} class(es){skipped})")
    print(f"accuracy  {result.accuracy:.2%}")
    print(f"top-5     {result.top5:.2%}" if result.top5 is not None else "top-5     n/a (fewer than 5 classes)")
    print()
    width = max(len("class"), *(len(name) for name in result.per_class))
    print(f"{'class':<{width}}  {'images':>6}  {'accuracy':>8}")
    counts = result.to_dict()["images_per_class"]
    for name, accuracy in result.per_class.items():
        print(f"{name:<{width}}  {counts[name]:>6}  {accuracy:>8.2%}")
    print()
    try:
        cm, names = result.observed()
        plot_confusion_matrix(cm, names, output / "confusion_matrix.png")
        report = {"checkpoint": str(args.checkpoint), "data_dir": str(args.data_dir), **result.to_dict()}
        (output / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    except OSError as error:
        print(f"error: --output: could not write the report files ({one_line(error)})", file=sys.stderr)
        return 2
    print(f"wrote {output / 'confusion_matrix.png'} and {output / 'eval.json'}")
    return 0


def check_output_folder(output: Path) -> None:
    """Create ``--output`` (and its parents) or say in one line why it cannot hold the report; before any work."""
    from mobilevit_torch.evaluation import EvaluationError

    if output.exists() and not output.is_dir():
        raise EvaluationError(f"--output {output} is a file, not a folder: pass a folder for the report")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EvaluationError(f"--output {output}: cannot create the folder ({error.strerror or error})") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise EvaluationError(f"--output {output}: the folder is not writable")


if __name__ == "__main__":
    sys.exit(main())
