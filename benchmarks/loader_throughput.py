"""How fast can each data path feed the training loop? (images/s, no model)

    python benchmarks/loader_throughput.py --root PATH/TO/flower_photos [--device cuda] [--img-size 256]

Measures, for the default recipe's augmentation: building the decode-once cache (one-time cost),
one epoch of the cached on-device path (gather + crop/flip + normalise), and one epoch of the
per-image DataLoader path (decode + RandomResizedCrop + flip in worker processes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_checks import output_file, positive_int, require_device  # noqa: E402

from mobilevit_torch.data.cache import decode_images  # noqa: E402
from mobilevit_torch.data.folder import make_split  # noqa: E402
from mobilevit_torch.preprocessing import Preprocessing  # noqa: E402
from mobilevit_torch.training.config import RecipeConfig  # noqa: E402
from mobilevit_torch.training.pipeline import CachedTrainBatches, LoaderTrainBatches, train_cache_size  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="a photo folder (one sub-folder per class)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--img-size", type=positive_int, default=256, help="(default 256)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="(default 128)")
    parser.add_argument("--workers", type=positive_int, default=8, help="decode and DataLoader processes (default 8)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    require_device(args.device, "loader_throughput.py")
    args.json = output_file(args.json, "--json")
    if not args.root.is_dir():
        raise SystemExit(f"loader_throughput.py: --root: no such folder: {args.root}")
    device = torch.device(args.device)
    split = make_split(args.root, seed=0)
    pre = Preprocessing().with_input_size(args.img_size)
    recipe = RecipeConfig()
    results = {}

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        cache = decode_images(split.train, size=train_cache_size(recipe, pre), mode="squash",
                              cache_dir=Path(cache_dir), num_workers=args.workers, progress=False)
        results["cache_build_img_s"] = len(cache.labels) / (time.perf_counter() - start)

    batches = CachedTrainBatches(cache.images.to(device), cache.labels.to(device), batch_size=args.batch_size,
                                 img_size=args.img_size, pre=pre, recipe=recipe, seed=0)
    for epoch in range(2):  # the first epoch warms up kernels
        sync(device)
        start = time.perf_counter()
        seen = sum(len(batches.materialize(batch)[1]) for batch in batches.epoch(epoch))
        sync(device)
        results["cached_path_img_s"] = seen / (time.perf_counter() - start)

    loader = LoaderTrainBatches(split.train, batch_size=args.batch_size, img_size=args.img_size, pre=pre,
                                recipe=recipe, seed=0, num_workers=args.workers, device=device)
    for epoch in range(2):  # the first epoch starts the worker processes
        start = time.perf_counter()
        seen = sum(len(loader.materialize(batch)[1]) for batch in loader.epoch(epoch))
        sync(device)
        results["dataloader_path_img_s"] = seen / (time.perf_counter() - start)

    results.update(device=str(device), img_size=args.img_size, batch_size=args.batch_size, workers=args.workers,
                   images=len(cache.labels))
    print("| path | images/s |\n|---|---|")
    for key in ("cache_build_img_s", "cached_path_img_s", "dataloader_path_img_s"):
        print(f"| {key.removesuffix('_img_s')} | {results[key]:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
