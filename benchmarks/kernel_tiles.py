"""The Triton inference kernels, one block at a time, against the PyTorch modules they replace.

For every distinct MV2 block and dense 3x3 convolution of a folded model (``fuse_for_inference``) at
``--batch``, in the bench's inference setting (bf16 autocast, channels-last, ``inference_mode``), it
times the folded modules (cuDNN's convolutions, SiLU, the residual add; the fusion convolution with
its ``torch.cat``) and the kernel under each ``--tiles`` choice of (output pixels per program,
warps), next to the memory bound of the kernel's one read of its inputs and one write of its output
at ``--bandwidth``. It prints a table (milliseconds; the fastest tiles starred) and writes JSON: which
tiles to make the default, and which blocks the kernels do not yet win.

    python benchmarks/kernel_tiles.py --device cuda --batch 256 --json $OUT/kernel_tiles.json

On a machine without a GPU it runs in Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors,
wall clock) for testing only: the times then mean nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from script_checks import output_file, positive_int, require_device

from mobilevit_torch import create_model
from mobilevit_torch.blocks import InvertedResidual, MobileViTBlock
from mobilevit_torch.blocks.mv2_kernel import mv2_forward
from mobilevit_torch.layers import ConvNormAct
from mobilevit_torch.layers import triton_support as ts
from mobilevit_torch.layers.conv_kernel import conv3x3_forward, is_dense_3x3
from mobilevit_torch.models.fuse import fuse_for_inference, set_inference_kernels


def cases(model: nn.Module, batch: int, size: int, device: str) -> list[tuple[str, nn.Module, list[Tensor], bool]]:
    """(name, module, inputs, is MV2) for each distinct block and dense 3x3 unit, inputs as one
    forward of ``size`` px images gives them (shapes recorded by hooks, values random)."""
    shapes: dict[int, list[tuple]] = {}

    def record(module: nn.Module, args: tuple) -> None:  # a pre-hook that returns nothing keeps the inputs
        shapes.setdefault(id(module), [a.shape for a in args])

    hooks = [
        module.register_forward_pre_hook(record)
        for module in model.modules()
        if isinstance(module, (InvertedResidual, ConvNormAct))
    ]
    with torch.inference_mode():
        model(torch.zeros(1, 3, size, size, device=device))
    for hook in hooks:
        hook.remove()
    fusion = {id(b.conv_fusion) for b in model.modules() if isinstance(b, MobileViTBlock)}
    found, seen = [], set()
    for module in model.modules():
        if id(module) not in shapes:
            continue
        (shape,) = shapes[id(module)]
        if isinstance(module, InvertedResidual):
            conv = module.depthwise.conv
            name = f"MV2 {module.expand.conv.in_channels}->{conv.in_channels}->{module.project.conv.out_channels}"
            name += f" /{conv.stride[0]} @{shape[2]}x{shape[3]}"
            widths, mv2 = [shape[1]], True
        elif isinstance(module, ConvNormAct) and is_dense_3x3(module):
            conv = module.conv
            widths = [shape[1] // 2] * 2 if id(module) in fusion else [shape[1]]
            kind = "stem" if conv.in_channels == 3 else "fusion" if len(widths) == 2 else "local"
            name = (
                f"{kind} 3x3 {'+'.join(map(str, widths))}->{conv.out_channels} /{conv.stride[0]} @{shape[2]}x{shape[3]}"
            )
            mv2 = False
        else:
            continue
        if name in seen:
            continue
        seen.add(name)
        generator = torch.Generator().manual_seed(0)
        inputs = [torch.randn(batch, w, shape[2], shape[3], generator=generator).to(device) for w in widths]
        if module is not model.stem:  # the stem reads the float32 image; the rest bf16 maps
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            inputs = [x.to(dtype).contiguous(memory_format=torch.channels_last) for x in inputs]
        found.append((name, module, inputs, mv2))
    return found


def timer(device: str, warmup: int, repeats: int, iters: int) -> Callable[[Callable[[], object]], float]:
    def measure(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iters):
                    fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / iters)
            else:
                begin = time.perf_counter()
                for _ in range(iters):
                    fn()
                samples.append((time.perf_counter() - begin) * 1e3 / iters)
        return statistics.median(samples)

    return measure


def output_bytes(module: nn.Module, inputs: list[Tensor], mv2: bool) -> int:
    with torch.inference_mode():
        out = mv2_forward(inputs[0], module) if mv2 else conv3x3_forward(module, *inputs)
    return out.numel() * out.element_size()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", default="xxs", choices=("xxs", "xs", "s"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--tiles", default="32x4,64x4,128x4,64x8,128x8", help="BLOCK_Pxnum_warps, comma-separated")
    parser.add_argument("--bandwidth", type=float, default=3350.0, help="GB/s (H100 SXM: 3,350)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=positive_int, default=10)
    parser.add_argument("--iters", type=positive_int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    require_device(args.device, "kernel_tiles.py")
    args.json = output_file(args.json, "--json")
    if args.device == "cpu" and not ts.INTERPRET:
        raise SystemExit("kernel_tiles.py: the kernels run on CUDA; on the CPU set TRITON_INTERPRET=1 (tests only)")
    if not re.fullmatch(r"\d+x\d+(,\d+x\d+)*", args.tiles.replace(" ", "")):
        raise SystemExit(f"kernel_tiles.py: --tiles takes BLOCK_Pxnum_warps, e.g. 32x4,64x8; got {args.tiles!r}")
    tiles = [tuple(int(v) for v in t.split("x")) for t in args.tiles.split(",") if t.strip()]

    model = fuse_for_inference(create_model(f"mobilevit_{args.variant}", num_classes=1000)).to(args.device)
    found = cases(model, args.batch, args.img_size, args.device)  # kernels off: every unit called as a module
    set_inference_kernels(model)
    measure = timer(args.device, args.warmup, args.repeats, args.iters)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda")
    rows = []
    for name, module, inputs, mv2 in found:
        with torch.inference_mode(), autocast:
            if mv2:
                module.mv2_kernel = False
                torch_ms = measure(lambda m=module, x=inputs[0]: m(x))
                module.mv2_kernel = True
                kernel = lambda m=module, x=inputs[0]: mv2_forward(x, m)  # noqa: E731
            else:
                module.conv_kernel = False
                torch_ms = measure(lambda m=module, xs=inputs: m(torch.cat(xs, dim=1)))
                module.conv_kernel = True
                kernel = lambda m=module, xs=inputs: conv3x3_forward(m, *xs)  # noqa: E731
            results = {}
            for block_p, warps in tiles:
                try:
                    with ts.forced_tiles(block_p, warps):
                        results[f"{block_p}x{warps}"] = measure(kernel)
                except Exception as error:
                    results[f"{block_p}x{warps}"] = None
                    print(f"  {name} {block_p}x{warps}: {type(error).__name__}", flush=True)
            nbytes = sum(x.numel() * x.element_size() for x in inputs) + output_bytes(module, inputs, mv2)
        bound_ms = nbytes / (args.bandwidth * 1e9) * 1e3
        rows.append({"block": name, "torch_ms": torch_ms, "kernel_ms": results, "bound_ms": bound_ms})
        print(f"{name}: torch {torch_ms:.3f} ms, kernel {results}", flush=True)

    names = [f"{p}x{w}" for p, w in tiles]
    lines = [
        "| block | torch ms | " + " | ".join(f"{n} ms" for n in names) + " | bound ms | best x torch |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for row in rows:
        valid = {k: v for k, v in row["kernel_ms"].items() if v is not None}
        best = min(valid, key=valid.get) if valid else None
        cells = [
            "-" if row["kernel_ms"][n] is None else f"{row['kernel_ms'][n]:.3f}{'*' if n == best else ''}"
            for n in names
        ]
        ratio = f"{row['torch_ms'] / valid[best]:.2f}" if best else "-"
        lines.append(
            f"| {row['block']} | {row['torch_ms']:.3f} | " + " | ".join(cells) + f" | {row['bound_ms']:.3f} | {ratio} |"
        )
    totals = {n: sum(r["kernel_ms"][n] or float("nan") for r in rows) for n in names}
    torch_total = sum(r["torch_ms"] for r in rows)
    lines.append(f"\nsum over distinct blocks: torch {torch_total:.3f} ms; kernels " + ", ".join(
        f"{n} {t:.3f}" for n, t in totals.items()
    ))  # fmt: skip
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton interpreter)"
    table = f"### {device_name}, {args.variant.upper()}, batch {args.batch}, {args.img_size} px\n\n" + "\n".join(lines)
    print(table)
    report = {"settings": {k: str(v) for k, v in vars(args).items()}, "device_name": device_name, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
