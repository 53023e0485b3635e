"""What ``bench_models.py`` reports: the ours/timm ratios, the markdown table, the headline lines, which
attention kernels run, and the machine and library versions."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_cases import PHASES, SHIPPED, TRAIN_PY_IMPL, Case, failure, mvt, value
from torch import Tensor


def ratio(case: Case, cases: list[Case]) -> float | None:
    """ours / timm in the same device, mode and phase: throughput ratio, or latency ratio (lower is better)."""
    ref = next(
        (c for c in cases if (c.device, c.mode, c.phase, c.impl) == (case.device, case.mode, case.phase, "timm")), None
    )
    ours, theirs = value(case), value(ref) if ref is not None else None
    if ours is None or theirs is None or case.impl == "timm":
        return None
    return ours / theirs


def markdown_table(cases: list[Case], device: str) -> str:
    rows = [c for c in cases if c.device == device]
    phases = [p for p in PHASES if any(c.phase == p for c in rows)]
    header = ["impl", "mode"]
    for phase in phases:
        batch = next(c.batch for c in rows if c.phase == phase)
        if phase == "latency":
            header += [f"latency b{batch} ms", "/ timm", "page faults"]
        else:
            header += [f"{phase} b{batch} img/s", "x timm"]
    header += [f"{p} peak MiB" for p in phases]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = list(dict.fromkeys((c.mode.name, c.impl) for c in rows))
    for mode_name, impl in keys:
        cells = [impl, mode_name]
        mine = {c.phase: c for c in rows if (c.mode.name, c.impl) == (mode_name, impl)}
        for phase in phases:
            case = mine.get(phase)
            v = value(case) if case else None
            r = ratio(case, rows) if case else None
            if case is None:
                cells += ["—", ""]
            elif v is None:
                cells += [case.status.split(":")[0], ""]
            else:
                cells += [f"{v:,.1f}", f"{r:.2f}" if r is not None else ""]
            if phase == "latency":
                cells.append(f"{statistics.median(case.faults):,.0f}" if case and case.faults else "")
        cells += [f"{mine[p].peak_mib:,.0f}" if p in mine and mine[p].peak_mib else "—" for p in phases]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(cases: list[Case], train_py_mode: str) -> list[str]:
    """Best ours (any mode) against best timm, overall and among compiled timm modes; and the issue's
    training target: ours with train.py's GPU defaults against timm's best compiled mode."""
    lines = []
    for case in cases:
        if (case.device, case.phase, case.impl, case.mode.name) != ("cuda", "train", TRAIN_PY_IMPL, train_py_mode):
            continue
        compiled = [
            c for c in cases if (c.device, c.phase, c.impl) == ("cuda", "train", "timm") and c.mode.compile_mode
        ]
        compiled = [c for c in compiled if value(c) is not None]
        if value(case) is not None and compiled:
            best = max(compiled, key=lambda c: value(c) or 0.0)
            lines.append(
                f"cuda train, train.py defaults [{train_py_mode}]: {TRAIN_PY_IMPL} {value(case):,.1f} img/s / "
                f"timm best compiled [{best.mode.name}] {value(best):,.1f} img/s = {value(case) / value(best):.2f}"  # type: ignore[operator]
            )
    ab_pairs = (
        ("ours", "ours-ref", "block fast path"),
        ("ours-fnorm", "ours", "fused BatchNorm+SiLU kernels"),
        ("ours-lpln", "ours-fnorm", "LayerNorm in autocast's dtype"),
        ("ours-fused", "ours-fused-ref", "oneDNN kernels"),
        ("ours-fused-mv2", "ours-fused", "MV2 blocks as one Triton kernel"),
        ("ours-fused-k", "ours-fused-mv2", "dense 3x3 convolutions as Triton kernels"),
    )
    for impl, baseline, what in ab_pairs:
        pairs = []
        for case in cases:
            ref = next(
                (
                    c
                    for c in cases
                    if c.impl == baseline and (c.device, c.mode, c.phase) == (case.device, case.mode, case.phase)
                ),
                None,
            )
            if case.impl == impl and ref is not None and value(case) and value(ref):
                r = value(case) / value(ref)  # type: ignore[operator]
                pairs.append(f"{case.device} {case.phase} [{case.mode.name}] {r:.3f}")
        if pairs:
            lines.append(f"{what}, {impl} / {baseline} (latency: lower is better): " + ", ".join(pairs))
    for device in dict.fromkeys(c.device for c in cases):
        for phase in PHASES:
            rows = [c for c in cases if c.device == device and c.phase == phase and value(c) is not None]
            if not rows:
                continue
            better = min if phase == "latency" else max
            # Best against best among the modes timm has a result in: a mode skipped or failed for timm
            # (e.g. compiled, past --time-budget) would otherwise pit ours compiled against timm eager.
            timm_modes = {c.mode.name for c in rows if c.impl == "timm"}
            for label, ours_pool, timm_pool in (
                (
                    "best vs best",
                    [c for c in rows if c.impl in SHIPPED and c.mode.name in timm_modes],
                    [c for c in rows if c.impl == "timm"],
                ),
                (
                    "eager vs eager",
                    [c for c in rows if c.impl in SHIPPED and not c.mode.compile_mode],
                    [c for c in rows if c.impl == "timm" and not c.mode.compile_mode],
                ),
                (
                    "best vs timm compiled",
                    [c for c in rows if c.impl in SHIPPED],
                    [c for c in rows if c.impl == "timm" and c.mode.compile_mode],
                ),
            ):
                if not ours_pool or not timm_pool:
                    continue
                ours = better(ours_pool, key=lambda c: value(c) or 0.0)
                timm = better(timm_pool, key=lambda c: value(c) or 0.0)
                r = value(ours) / value(timm)  # type: ignore[operator]
                unit = "ms" if phase == "latency" else "img/s"
                lines.append(
                    f"{device} {phase} {label}: {ours.impl} [{ours.mode.name}] {value(ours):,.1f} {unit} / "
                    f"timm [{timm.mode.name}] {value(timm):,.1f} {unit} = {r:.2f}"
                )
    return lines



def sdpa_backends(device: str, head_dims: list[int], tokens: int, dtype: torch.dtype) -> dict[str, dict[str, str]]:
    """Which scaled-dot-product-attention kernels accept MobileViT's head dims (forward and backward)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    candidates = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if device == "cuda" and hasattr(SDPBackend, "CUDNN_ATTENTION"):
        candidates.insert(2, SDPBackend.CUDNN_ATTENTION)
    report: dict[str, dict[str, str]] = {}
    for head_dim in head_dims:
        q, k, v = (torch.randn(4, 4, tokens, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in "qkv")
        entry = {}
        for backend in candidates:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    with sdpa_kernel([backend]):
                        F.scaled_dot_product_attention(q, k, v).sum().backward()
                    entry[backend.name] = "ok"
                except Exception as error:  # the backend refuses these shapes/dtype; its warnings say why
                    reasons = [" ".join(str(w.message).split()) for w in caught] or [" ".join(str(error).split())]
                    entry[backend.name] = "no: " + " | ".join(reasons)[:300]
        entry["default"] = default_sdpa_kernel(q, k, v)
        report[str(head_dim)] = entry
    return report


def default_sdpa_kernel(q: Tensor, k: Tensor, v: Tensor) -> str:
    """The attention kernels PyTorch actually runs for these inputs when left to choose (forward + backward)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if q.is_cuda else [])
    try:
        with profile(activities=activities) as prof:
            F.scaled_dot_product_attention(q, k, v).sum().backward()
            if q.is_cuda:
                torch.cuda.synchronize()
        names = {e.key for e in prof.key_averages()}
    except Exception as error:  # e.g. no CUPTI: the report is optional
        return failure(error)
    names = {n for n in names if not n.startswith("autograd::") and not n.endswith("Backward0")}
    picked = sorted(n for n in names if any(s in n.lower() for s in ("flash", "efficient", "cudnn", "fmha", "math")))
    return ", ".join(picked) or ", ".join(sorted(n for n in names if "attention" in n.lower()))


def machine(device: str, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "threads": threads, "platform": platform.platform()}
    if device == "cuda":
        info["name"] = torch.cuda.get_device_name()
        info["cudnn.benchmark"] = torch.backends.cudnn.benchmark
        info["cudnn.allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul.allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    else:
        name = platform.processor() or "cpu"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        info["name"] = f"{name} ({os.cpu_count()} logical CPUs)"
    return info


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "mobilevit_torch": mvt.__version__}
    for name in ("timm", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out

