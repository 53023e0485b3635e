"""Where a training step's GPU time goes: the kernels of one eager step, grouped and ranked.

Builds the same step as ``bench_models.py`` (``--mode`` and ``--impl`` as there; a graph mode is
profiled uncaptured, since a replayed graph hides its kernels from the profiler), runs warm-up
steps, profiles ``--steps`` steps and prints the kernels by total GPU time per step, plus a summary
by kind (convolution forward/backward, depthwise, normalisation, elementwise, attention,
optimizer, data).

    python benchmarks/profile_step.py --impl ours --mode bf16+cl --batch 128
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cases
from script_checks import positive_int, require_device

KINDS = [  # first match wins; matched against the lower-cased kernel name
    ("depthwise conv", r"depthwise|dgrad.*dw|conv_depthwise|dwconv"),
    ("conv backward", r"dgrad|wgrad|backward.*conv|conv.*backward|bprop"),
    ("conv / gemm", r"conv|gemm|cutlass|sm90_xmma|xmma|implicit|nhwckrsc|cudnn"),
    ("attention", r"flash|fmha|attention|softmax"),
    ("normalisation", r"batch_norm|batchnorm|bn_|layer_norm|layernorm|welford"),
    ("optimizer / EMA", r"adam|foreach|multi_tensor"),
    ("data (gather, crop, mix)", r"grid_sampler|index|gather|scatter|affine_grid"),
    ("copies / layout", r"copy|transpose|permute|contiguous|nchwtonhwc|nhwctonchw"),
    ("elementwise / reduce", r"elementwise|vectorized|reduce|unrolled|silu|mul|add"),
]


def kind(name: str) -> str:
    lowered = name.lower()
    for label, pattern in KINDS:
        if re.search(pattern, lowered):
            return label
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", default="ours", choices=bench_cases.IMPLS, help="(default ours)")
    parser.add_argument("--mode", default="bf16+cl", help="as bench_models.py's; +graph is ignored (default bf16+cl)")
    parser.add_argument("--batch", type=positive_int, default=128, help="(default 128)")
    parser.add_argument("--img-size", type=positive_int, default=256, help="(default 256)")
    parser.add_argument("--variant", default="xxs", choices=sorted(bench_cases.HF_CONFIGS))
    parser.add_argument("--steps", type=positive_int, default=5, help="steps profiled (default 5)")
    parser.add_argument("--top", type=positive_int, default=25, help="kernels listed (default 25)")
    parser.add_argument("--phase", default="train", choices=("train", "infer"))
    args = parser.parse_args()
    args.dropout = "off"
    require_device("cuda", "profile_step.py (it profiles GPU kernels)")
    torch.backends.cudnn.benchmark = True
    try:
        mode = bench_cases.parse_mode(args.mode, "default")
    except ValueError as error:
        raise SystemExit(f"--mode: {error}") from None
    mode = bench_cases.Mode(mode.name, mode.bf16, mode.channels_last, mode.compile_mode, False, mode.recipe)
    case = bench_cases.Case("cuda", args.impl, mode, args.phase, args.batch)
    step = bench_cases.build_step(case, args)
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        per_kernel[event.name] += event.time_range.elapsed_us() / 1e3 / args.steps  # ms per step
        counts[event.name] += 1
    total = sum(per_kernel.values())
    by_kind: dict[str, float] = defaultdict(float)
    for name, ms in per_kernel.items():
        by_kind[kind(name)] += ms
    print(
        f"{args.impl} {args.mode} {args.phase} b{args.batch}: {total:.2f} ms of GPU kernels per step, "
        f"{sum(counts.values()) / args.steps:.0f} kernels per step"
    )
    print("| kind | ms/step | share |\n|---|---|---|")
    for label, ms in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"| {label} | {ms:.2f} | {100 * ms / total:.1f}% |")
    print(f"\n| kernel (top {args.top}) | kind | calls/step | ms/step | share |\n|---|---|---|---|---|")
    for name, ms in sorted(per_kernel.items(), key=lambda item: -item[1])[: args.top]:
        short = name if len(name) < 90 else name[:87] + "..."
        print(f"| `{short}` | {kind(name)} | {counts[name] / args.steps:.0f} | {ms:.3f} | {100 * ms / total:.1f}% |")


if __name__ == "__main__":
    main()
