"""Every convolution of a MobileViT training step, timed alone against its memory and compute bound.

The session-3 profile put 5.3 ms of a batch-128 bf16 training step on an H100 in cuDNN's convolutions,
but its kernel names do not say which convolutions (pointwise, depthwise, the 3x3 ones of the
MobileViT blocks) take that time. This script records the convolutions one forward of the model runs
(``aten.convolution`` calls, so the MobileViT block's 1x1 projections that run as matmuls on tokens
are not among them), then times each distinct one at ``--batch`` in the training precision and
layout: forward, input gradient and weight gradient, separately (the stem's input gradient is not
part of a step). Per pass it prints the time against the lower bound that the bytes it must move and
its FLOPs give at ``--bandwidth`` / ``--tflops`` (H100 SXM: 3,350 GB/s, 989 bf16 TFLOP/s dense), summed
by kind: how much a hand-written kernel could at most save on each kind.

    python benchmarks/conv_census.py --device cuda --batch 128 --json $OUT/conv_census.json

On the CPU (``--device cpu``, float32, wall clock) it runs too, for testing; the bounds then mean little.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from script_checks import output_file, positive_int, require_device

from mobilevit_torch import create_model

PASSES = ("forward", "input grad", "weight grad")


@dataclass(frozen=True)
class Conv:
    """One convolution as the network calls it, for one image (the batch is set when timing)."""

    in_chs: int
    out_chs: int
    height: int  # input
    width: int
    kernel: int
    stride: int
    padding: int
    groups: int
    first: bool  # the stem: its input needs no gradient

    @property
    def kind(self) -> str:
        if self.first:
            return "stem 3x3"
        if self.groups > 1 and self.groups == self.in_chs == self.out_chs:
            return f"depthwise {self.kernel}x{self.kernel}"
        return f"{'pointwise' if self.kernel == 1 else 'full'} {self.kernel}x{self.kernel}"

    def out_size(self) -> tuple[int, int]:
        def size(n: int) -> int:
            return (n + 2 * self.padding - self.kernel) // self.stride + 1

        return size(self.height), size(self.width)

    def describe(self) -> str:
        groups = f" g{self.groups}" if self.groups > 1 else ""
        shape = f"{self.kernel}x{self.kernel}/{self.stride}{groups}"
        return f"{self.in_chs}->{self.out_chs} {shape} @{self.height}x{self.width}"


class _RecordConvolutions(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Conv] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            x, weight, _, stride, padding, dilation, transposed, _, groups = args
            assert not transposed and tuple(dilation) == (1, 1), "the census handles plain convolutions only"
            assert stride[0] == stride[1] and padding[0] == padding[1] and weight.shape[2] == weight.shape[3]
            self.calls.append(
                Conv(x.shape[1], weight.shape[0], x.shape[2], x.shape[3], weight.shape[2], stride[0], padding[0],
                     groups, first=not self.calls)
            )  # fmt: skip
        return func(*args, **(kwargs or {}))


def record_convolutions(variant: str, img_size: int) -> Counter[Conv]:
    """The convolutions one training-mode forward of ``mobilevit_<variant>`` runs, with how often each."""
    model = create_model(f"mobilevit_{variant}", num_classes=5).train()
    with _RecordConvolutions() as recorder:
        model(torch.rand(2, 3, img_size, img_size))
    return Counter(recorder.calls)


def bytes_and_flops(conv: Conv, batch: int, element: int) -> dict[str, tuple[int, int]]:
    """Per pass: the fewest bytes it must move (each operand read once, the result written once) and its FLOPs."""
    out_h, out_w = conv.out_size()
    x = batch * conv.in_chs * conv.height * conv.width
    y = batch * conv.out_chs * out_h * out_w
    w = conv.out_chs * (conv.in_chs // conv.groups) * conv.kernel**2
    flops = 2 * batch * out_h * out_w * conv.out_chs * (conv.in_chs // conv.groups) * conv.kernel**2
    return {
        "forward": ((x + w + y) * element, flops),
        "input grad": ((y + w + x) * element, flops),
        "weight grad": ((y + x + w) * element, flops),
    }


def timer(device: torch.device, repeats: int, warmup: int) -> Callable[[Callable[[], object]], float]:
    def measure(fn: Callable[[], object]) -> float:
        """The median milliseconds of one call."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                started = time.perf_counter()
                fn()
                times.append((time.perf_counter() - started) * 1e3)
        return statistics.median(times)

    return measure


def time_passes(conv: Conv, args: argparse.Namespace, measure: Callable[[Callable[[], object]], float]) -> dict:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    out_h, out_w = conv.out_size()

    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype).to(memory_format=layout)

    x = tensor(args.batch, conv.in_chs, conv.height, conv.width)
    w = tensor(conv.out_chs, conv.in_chs // conv.groups, conv.kernel, conv.kernel)
    dy = tensor(args.batch, conv.out_chs, out_h, out_w)
    geometry = ([conv.stride] * 2, [conv.padding] * 2, [1, 1], False, [0, 0], conv.groups)

    def backward(mask: list[bool]) -> Callable[[], object]:
        return lambda: torch.ops.aten.convolution_backward(dy, x, w, None, *geometry, mask)

    with torch.no_grad():
        times = {
            "forward": measure(lambda: torch.ops.aten.convolution(x, w, None, *geometry)),
            "input grad": 0.0 if conv.first else measure(backward([True, False, False])),
            "weight grad": measure(backward([False, True, False])),
        }
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", default="xxs", choices=("xxs", "xs", "s"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--bandwidth", type=float, default=3350.0, help="GB/s for the bound (H100 SXM)")
    parser.add_argument("--tflops", type=float, default=989.0, help="dense TFLOP/s for the bound (H100 bf16)")
    parser.add_argument("--repeats", type=positive_int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    require_device(args.device, "conv_census.py")
    if args.dtype is not None and args.dtype not in ("float32", "bfloat16", "float16"):
        raise SystemExit(f"conv_census.py: --dtype must be float32, bfloat16 or float16, got {args.dtype!r}")
    args.json = output_file(args.json, "--json")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    torch.backends.cudnn.benchmark = True  # the fastest kernels (train.py skips the search: same speed, NOTES)
    element = torch.finfo(getattr(torch, args.dtype)).bits // 8

    convs = record_convolutions(args.variant, args.img_size)
    measure = timer(torch.device(args.device), args.repeats, args.warmup)
    rows = []
    for conv, count in convs.items():
        times = time_passes(conv, args, measure)
        for name, (moved, flops) in bytes_and_flops(conv, args.batch, element).items():
            if name == "input grad" and conv.first:
                continue
            bound = max(moved / (args.bandwidth * 1e9), flops / (args.tflops * 1e12)) * 1e3  # ms
            rows.append(
                {"conv": conv.describe(), "kind": conv.kind, "pass": name, "count": count, "ms": times[name] * count,
                 "bound_ms": bound * count, "bytes": moved * count, "flops": flops * count, **asdict(conv)}
            )  # fmt: skip

    total = sum(row["ms"] for row in rows)
    by_kind: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        group = by_kind.setdefault((row["kind"], row["pass"]), {"count": 0, "ms": 0.0, "bound_ms": 0.0})
        for key in group:
            group[key] += row[key]
    print(
        f"mobilevit_{args.variant} b{args.batch} {args.img_size}px {args.dtype} "
        f"{'channels_last' if args.channels_last else 'NCHW'} on {args.device}: {sum(convs.values())} convolutions "
        f"({len(convs)} distinct) per forward, {total:.2f} ms per training step in convolution passes"
    )
    print("| kind | pass | calls | ms/step | share | bound ms | x bound |\n|---|---|---|---|---|---|---|")
    for (kind, name), group in sorted(by_kind.items(), key=lambda item: -item[1]["ms"]):
        times_bound = group["ms"] / group["bound_ms"] if group["bound_ms"] else float("inf")
        print(
            f"| {kind} | {name} | {group['count']:.0f} | {group['ms']:.3f} | {100 * group['ms'] / total:.1f}% "
            f"| {group['bound_ms']:.3f} | {times_bound:.1f} |"
        )
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "total_ms": total,
        "by_kind": [{"kind": k, "pass": p, **group} for (k, p), group in by_kind.items()],
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
