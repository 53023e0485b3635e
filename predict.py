"""Classify images with a training checkpoint or an exported file: the top-k classes of each, with probabilities.

    python predict.py outputs/<run>/best.pt photo.jpg [more.jpg ...] [--topk 5] [--device auto]
    python predict.py outputs/<run>/best.pt my_photos/      # every image file in the folder, recursively
    python predict.py model.tflite photo.jpg                # what export.py wrote, run as an app runs it

An unreadable or missing image named on the command line ends the run, before any image is
classified, with one ``error:`` line naming it and exit status 2 (answers are printed per image, so
skipping one silently would be easy to misread). Inside a folder, unreadable image files are
skipped, each with a warning, and counted at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from mobilevit_torch.cli import one_line, positive_int, start_inference_script


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="a mobilevit-torch training checkpoint (.pt), or a .onnx / .tflite file export.py wrote (run on the "
        "CPU as an app runs it, with the class names and preprocessing of its sidecar <file>.json)",
    )
    parser.add_argument(
        "images", type=Path, nargs="+", metavar="IMAGE", help="image files, or folders of them, to classify"
    )
    parser.add_argument("--topk", type=positive_int, default=5, help="classes to show per image (default 5)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (code := start_inference_script(args.checkpoint, args.device)) is not None:
        return code
    # Imported only now, so --help and the early errors answer without loading torch (seconds).
    from mobilevit_torch.evaluation import USER_ERRORS, load_model_from_checkpoint, predict_images, resolve_device
    from mobilevit_torch.export.classifier import exported_device, is_exported, load_exported
    from mobilevit_torch.export.errors import ExportError

    try:
        if is_exported(args.checkpoint):
            device, model = exported_device(args.device), load_exported(args.checkpoint)
        else:
            device, model = resolve_device(args.device), load_model_from_checkpoint(args.checkpoint)
        images, skipped = expand_folders(args.images)
        predictions = predict_images(model, images, topk=args.topk, device=device)
    except (*USER_ERRORS, ExportError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    width = max(len(name) for ranked in predictions for name, _ in ranked)
    for path, ranked in zip(images, predictions, strict=True):
        print(path)
        for name, probability in ranked:
            print(f"  {name:<{width}}  {probability:7.2%}")
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable image file(s) in the folder(s); see the warnings above", file=sys.stderr
        )
    return 0


def expand_folders(paths: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The images to classify, in command-line order: each folder replaced by the readable image files
    below it (sorted), and ``(path, reason)`` for those skipped. Named files are checked first, all of
    them, so a missing or unreadable one is an error before any folder is scanned or image classified."""
    from mobilevit_torch.data.datasets import find_unreadable
    from mobilevit_torch.data.folder import DataError, Sample, list_image_files, log_other_files
    from mobilevit_torch.data.images import BadImageError

    named = [path for path in paths if not path.is_dir()]
    missing = [path for path in named if not path.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise BadImageError(missing[0], f"no such file{more}")
    _, bad = find_unreadable([Sample(str(path), 0) for path in named], warn=False)  # the error names them
    if bad:
        others = [path for path, _ in bad[1:]]
        listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise BadImageError(bad[0][0], bad[0][1] + (f" (also unreadable: {listed})" if others else ""))

    images: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        if not path.is_dir():
            images.append(path)
            continue
        others: Counter[str] = Counter()
        found = list_image_files(path, others=others)  # as evaluate.py and training list them
        log_other_files(others, path)
        if not found:
            raise DataError(f"{path} is a folder with no image files in it")
        readable, bad = find_unreadable([Sample(p, 0) for p in found])
        images += [Path(sample.path) for sample in readable]
        skipped += bad
    if not images:
        raise DataError("no readable image in the folder(s) given")
    return images, skipped


if __name__ == "__main__":
    sys.exit(main())
