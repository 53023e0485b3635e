"""What writing a training checkpoint costs the training loop: synchronously, and handed to the writer thread.

Builds the state ``train.py`` saves every epoch (model, AdamW moments, EMA, RNG; XXS, 5 classes) on
``--device`` and times, ``--repeats`` times each, in one process:

  save_checkpoint     serialise + write + fsync + rename in the caller (what the loop did before)
  writer.save         what the loop waits for now: the snapshot handed to ``CheckpointWriter``
  writer, written     from handing it over until the file is on disk

    python benchmarks/checkpoint_cost.py --out /tmp/ckpt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_checks import positive_int, require_device  # noqa: E402

from mobilevit_torch.checkpoint import model_payload, save_checkpoint  # noqa: E402
from mobilevit_torch.registry import create_model, list_models  # noqa: E402
from mobilevit_torch.training.checkpoint import CheckpointWriter  # noqa: E402
from mobilevit_torch.training.ema import ModelEma  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilevit_xxs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoint files")
    args = parser.parse_args(argv)
    require_device(args.device, "checkpoint_cost.py")
    if args.model not in list_models():
        raise SystemExit(f"checkpoint_cost.py: unknown --model {args.model!r}; choose from {', '.join(list_models())}")

    model = create_model(args.model, num_classes=5).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 64, 64, device=args.device)).sum().backward()
    optimizer.step()
    ema = ModelEma(model, decay=0.999)

    def payload() -> dict:
        return {
            **model_payload(model, list("abcde")),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict(),
            "rng": torch.get_rng_state(),
        }

    times: dict[str, list[float]] = {"save_checkpoint": [], "writer.save": [], "writer, written": []}
    with CheckpointWriter() as writer:
        for _ in range(args.repeats):
            begin = time.perf_counter()
            save_checkpoint(args.out / "sync.pt", payload())
            times["save_checkpoint"].append(time.perf_counter() - begin)
            begin = time.perf_counter()
            writer.save(args.out / "background.pt", payload())
            times["writer.save"].append(time.perf_counter() - begin)
            writer.wait()
            times["writer, written"].append(time.perf_counter() - begin)
    size = (args.out / "sync.pt").stat().st_size / 2**20
    print(f"{args.model} training state on {args.device}, {size:.1f} MiB per file; ms, median (min-max):")
    for name, values in times.items():
        ms = [1e3 * v for v in values]
        print(f"  {name:16s} {statistics.median(ms):7.1f}  ({min(ms):.1f}-{max(ms):.1f})")
    return times


if __name__ == "__main__":
    main()
