"""Side-by-side speed of this package's MobileViT, timm's and transformers' (same variant, same settings).

One run measures, for every implementation x mode:

  train    img/s of one full training step (forward, cross-entropy, backward, AdamW step), batch ``--batch``
  infer    img/s of ``torch.inference_mode`` forward passes, batch ``--batch``
  latency  ms per batch-1 inference (CPU only: on a GPU batch 1 measures launch overhead, not the model)

and the peak memory of each (weights, gradients, optimizer state, input and activations): on CUDA the
allocator's own count (for CUDA-graph modes the peak of capturing, which the graph's memory pool
keeps), on the CPU the bytes the case holds after warm-up (glibc's count of allocated heap) plus the
peak of one profiled step's allocations above that.
Modes combine ``fp32``/``bf16`` (autocast), ``cl`` (channels_last input and weights) and
``compile`` / ``compile:<mode>`` (``torch.compile``, e.g. ``compile:max-autotune`` for CUDA graphs plus
autotuning). ``ours-fused`` is this package's model after ``fuse_for_inference`` (BatchNorm folded,
channels-last weights; on the CPU its convolutions run as pre-packed oneDNN kernels with SiLU fused):
it has no training row. Two A/B baselines run only when asked for: ``ours-ref`` is ours with the
MobileViT block computed as Fig. 1b draws it (the block's fast path), ``ours-fused-ref`` is
``ours-fused`` with PyTorch's own convolution op (the CPU kernels). ``ours-fnorm`` (training only,
also on request) is what ``train.py`` trains on a GPU (``fused_norm=true``, the default there): BatchNorm
+ SiLU as fused Triton kernels, which apply on CUDA in channels-last modes without compile (elsewhere it
is ours); ``ours-lpln`` adds ``layernorm_low_precision=true`` (LayerNorm in autocast's dtype).
``ours-fused-mv2`` (inference, on request) is ``ours-fused`` with every MV2 block as one Triton kernel
(``set_mv2_kernel``), ``ours-fused-k`` adds the dense 3x3 convolutions as Triton kernels
(``set_inference_kernels``: both); on CUDA, eager or compiled; elsewhere they are ``ours-fused``. The table's
``x timm`` columns are the headline: ours / timm in the same mode. Dropout is off in every
implementation (``--dropout default`` keeps each library's own), so all three do the same work.

    python benchmarks/bench_models.py --device cpu --quick --json cpu.json    # CPU, ~8 minutes
    python benchmarks/bench_models.py --device cuda --json gpu.json           # GPU; NOTES.md has the H100 command

Timing: random data already on the device; warm-up iterations (which include compilation) then
``repeats`` timed blocks of ``iters`` iterations, reported as the median block. CUDA blocks are timed
with CUDA events and one synchronize per block; the loop itself never syncs with the host. On the CPU
the implementations are interleaved block by block, so load from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Kineto (the profiler the CPU rows use for peak memory) logs an alarming "ERROR ... gpuGetDeviceCount
# failed" on a machine without a GPU; its level must be set before torch loads it.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cases import HF_CONFIGS, IMPLS, PHASES, TRAIN_ONLY, TRAINABLE, Case, Mode, parse_mode, plans, value
from bench_report import headline, machine, markdown_table, ratio, sdpa_backends, versions
from bench_timing import run_group
from script_checks import output_file

from mobilevit_torch.cli import keep_freed_memory  # the repository is on sys.path: bench_cases put it there

DEFAULT_IMPLS = ("ours", "ours-fused", "timm", "hf")
DEFAULT_MODES = {"cuda": "fp32,bf16,bf16+cl,bf16+cl+compile", "cpu": "fp32,fp32+cl,bf16+cl,fp32+cl+compile"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="xxs", choices=sorted(HF_CONFIGS))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cpu,cuda (auto: cuda when present)")
    parser.add_argument("--impl", default=",".join(DEFAULT_IMPLS), help=f"comma-separated, from {', '.join(IMPLS)}")
    parser.add_argument("--modes", default=None, help=f"CUDA modes (default {DEFAULT_MODES['cuda']})")
    parser.add_argument("--cpu-modes", default=None, help=f"CPU modes (default {DEFAULT_MODES['cpu']})")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for a bare 'compile' token")
    parser.add_argument("--compile-impls", default=None, help="implementations that get compiled modes (default all)")
    parser.add_argument("--phases", default=None, help="train,infer,latency (default: train,infer on CUDA, all on CPU)")
    parser.add_argument("--batch", type=int, default=256, help="CUDA batch size")
    parser.add_argument("--cpu-batch", type=int, default=32, help="CPU batch size for train/infer (latency: 1)")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's current setting)")
    parser.add_argument("--quick", action="store_true", help="fewer warm-up and timed iterations")
    parser.add_argument(
        "--cpu-clock",
        default="wall",
        choices=("wall", "process"),
        help="CPU timer: wall clock, or this process's CPU time (steadier on a shared machine; use with --threads 1)",
    )
    parser.add_argument(
        "--train-py-mode",
        default="bf16+cl+graph+recipe",
        help="the mode matching train.py's GPU defaults (for the headline)",
    )
    parser.add_argument("--dropout", default="off", choices=("off", "default"), help="off: no dropout in any impl")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; later cases are skipped after it")
    parser.add_argument("--sdpa-report", action="store_true", help="probe which SDPA kernels take the head dims")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="set glibc malloc as train.py/evaluate.py/predict.py do (no page faults from re-mapped activations)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, list[Mode]], dict[str, list[str]]]:
    """Every argument checked before anything is built or timed (a mistake is one line, not a traceback
    after the cases before it): the devices, implementations, modes and phases per device."""
    if args.device == "auto":
        devices = ["cuda" if torch.cuda.is_available() else "cpu"]
    else:
        devices = [d.strip() for d in args.device.split(",")]
    for device in devices:
        if device not in ("cpu", "cuda"):
            raise SystemExit(f"unknown --device {device!r}: use auto, cpu, cuda or cpu,cuda")
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    if args.modes and "cuda" not in devices:
        raise SystemExit("--modes sets the CUDA modes; for the CPU use --cpu-modes")
    if args.cpu_modes and "cpu" not in devices:
        raise SystemExit("--cpu-modes sets the CPU modes; for CUDA use --modes")
    impls = [i.strip() for i in args.impl.split(",")]
    for impl in [*impls, *(args.compile_impls.split(",") if args.compile_impls else [])]:
        if impl.strip() not in IMPLS:
            raise SystemExit(f"unknown implementation {impl!r} (--impl, --compile-impls): use {', '.join(IMPLS)}")
    if args.compile_mode not in COMPILE_MODES:
        raise SystemExit(f"unknown --compile-mode {args.compile_mode!r}; choose from {', '.join(COMPILE_MODES)}")
    for option, number in (("--batch", args.batch), ("--cpu-batch", args.cpu_batch), ("--img-size", args.img_size)):
        if number < 1:
            raise SystemExit(f"{option} must be a positive integer, got {number}")
    if args.img_size % 32:
        raise SystemExit(f"--img-size must be a multiple of 32 (the network's stride), got {args.img_size}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be a positive integer, got {args.threads}")
    if args.time_budget is not None and args.time_budget <= 0:
        raise SystemExit(f"--time-budget must be a positive number of seconds, got {args.time_budget}")
    modes, phases = {}, {}
    for device in devices:
        mode_text = (args.modes if device == "cuda" else args.cpu_modes) or DEFAULT_MODES[device]
        try:
            modes[device] = [parse_mode(m, args.compile_mode) for m in mode_text.split(",") if m.strip()]
        except ValueError as error:
            raise SystemExit(f"--{'modes' if device == 'cuda' else 'cpu-modes'}: {error}") from None
        for mode in modes[device]:
            if mode.compile_mode is not None and mode.compile_mode not in COMPILE_MODES:
                raise SystemExit(f"{mode.name}: unknown torch.compile mode; choose from {', '.join(COMPILE_MODES)}")
            if device == "cpu" and mode.graph:
                raise SystemExit(f"{mode.name}: +graph replays CUDA graphs; it is a CUDA mode (--modes)")
        default_phases = "train,infer" if device == "cuda" else ",".join(PHASES)
        phases[device] = [p.strip() for p in (args.phases or default_phases).split(",")]
        for phase in phases[device]:
            if phase not in PHASES:
                raise SystemExit(f"unknown phase {phase!r} in --phases; choose from {', '.join(PHASES)}")
    for option in ("json", "markdown"):
        setattr(args, option, output_file(getattr(args, option), f"--{option}"))
    return devices, impls, modes, phases


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    devices, impls, modes_by_device, phases_by_device = check_args(args)
    compile_impls = set(impls if args.compile_impls is None else args.compile_impls.split(","))
    if args.keep_freed_memory:
        print(f"memory: {keep_freed_memory()}", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.backends.cudnn.benchmark = True  # fastest kernels (train.py skips the search: same later speed)
    for name in ("cache_size_limit", "recompile_limit"):  # many compiled models of one class in one process
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)

    start = time.perf_counter()
    deadline = start + args.time_budget if args.time_budget else float("inf")
    cases: list[Case] = []
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "versions": versions(),
        "machines": {},
        "sdpa": {},
    }
    for device in devices:
        report["machines"][device] = machine(device, threads)
        modes, phases = modes_by_device[device], phases_by_device[device]
        batch = args.batch if device == "cuda" else args.cpu_batch
        print(f"== {device}: {report['machines'][device]['name']}, {threads} threads", flush=True)
        for mode in modes:
            for phase in phases:
                group = [
                    Case(device, impl, mode, phase, 1 if phase == "latency" else batch)
                    for impl in impls
                    if (phase != "train" or impl in TRAINABLE)
                    and (phase == "train" or impl not in TRAIN_ONLY)
                    and (mode.compile_mode is None or impl in compile_impls)
                ]
                print(f"-- {mode.name} {phase}", flush=True)
                run_group(group, args, plans(device, args.quick)[phase], deadline)
                cases.extend(group)
        if args.sdpa_report:
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            report["sdpa"][device] = sdpa_backends(device, [16, 20, 24], tokens=256, dtype=dtype)
    report["elapsed_s"] = round(time.perf_counter() - start, 1)

    tables = []
    for device in devices:
        info = report["machines"][device]
        title = f"### {device}: {info['name']}, {threads} threads, torch {torch.__version__}, {args.variant.upper()}"
        tables.append(f"{title}, {args.img_size} px\n\n{markdown_table(cases, device)}")
    text = "\n\n".join(tables) + "\n\n" + "\n".join(f"- {line}" for line in headline(cases, args.train_py_mode))
    print("\n" + text + f"\n\n(total {report['elapsed_s']} s)")
    if report["sdpa"]:
        print("SDPA kernels accepting head dims 16/20/24:", json.dumps(report["sdpa"], indent=1))

    report["results"] = [
        {
            "device": c.device,
            "impl": c.impl,
            "mode": c.mode.name,
            "phase": c.phase,
            "batch": c.batch,
            "status": c.status,
            "value": value(c),
            "unit": "ms" if c.phase == "latency" else "img/s",
            "ratio_vs_timm": ratio(c, cases),
            "samples_s": c.samples_s,
            "min_s": min(c.samples_s) if c.samples_s else None,
            "warmup_s": c.warmup_s,
            "peak_mib": c.peak_mib,
            "page_faults_per_iter": statistics.median(c.faults) if c.faults else None,
        }
        for c in cases
    ]
    report["headline"] = headline(cases, args.train_py_mode)
    if args.json:  # check_args made sure both can be written
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(text + "\n")
        print(f"wrote {args.markdown}")
    return report


if __name__ == "__main__":
    main()
