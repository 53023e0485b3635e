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
import contextlib
import ctypes
import datetime
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Kineto (the profiler the CPU rows use for peak memory) logs an alarming "ERROR ... gpuGetDeviceCount
# failed" on a machine without a GPU; its level must be set before torch loads it.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

import mobilevit_torch as mvt  # noqa: E402
from mobilevit_torch.blocks import MobileViTBlock, fold_patches, set_mv2_kernel, unfold_patches  # noqa: E402
from mobilevit_torch.cli import keep_freed_memory  # noqa: E402
from mobilevit_torch.graphed import GraphedForward  # noqa: E402
from mobilevit_torch.layers import ConvNormAct  # noqa: E402
from mobilevit_torch.layers.fused_norm import set_fused_norm  # noqa: E402
from mobilevit_torch.layers.layer_norm import set_low_precision_layernorm  # noqa: E402
from mobilevit_torch.models.fuse import fuse_for_inference, set_inference_kernels  # noqa: E402
from mobilevit_torch.preprocessing import Preprocessing  # noqa: E402
from mobilevit_torch.training.config import RecipeConfig, TrainConfig  # noqa: E402
from mobilevit_torch.training.ema import ModelEma  # noqa: E402
from mobilevit_torch.training.mixing import Mixer  # noqa: E402
from mobilevit_torch.training.optimizer import build_optimizer  # noqa: E402
from mobilevit_torch.training.pipeline import Batch, CachedTrainBatches  # noqa: E402
from mobilevit_torch.training.step import TrainStep  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from script_checks import output_file  # noqa: E402

IMPLS = (
    "ours", "ours-ref", "ours-fnorm", "ours-lpln", "ours-fused", "ours-fused-ref", "ours-fused-mv2", "ours-fused-k",
    "timm", "hf",
)  # fmt: skip
DEFAULT_IMPLS = ("ours", "ours-fused", "timm", "hf")
TRAINABLE = ("ours", "ours-ref", "ours-fnorm", "ours-lpln", "timm", "hf")
TRAIN_ONLY = ("ours-fnorm", "ours-lpln")  # train.py's switches; the fused kernels are for training only
SHIPPED = ("ours", "ours-fnorm", "ours-fused")  # what the package offers; the -ref rows are only A/B baselines
TRAIN_PY_IMPL = "ours-fnorm"  # the model train.py trains on a GPU (fused_norm=true by default)
PHASES = ("train", "infer", "latency")
# transformers' MobileViTConfig for each variant (the sizes its ml-cvnets conversion script uses).
HF_CONFIGS: dict[str, dict[str, Any]] = {
    "xxs": dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0),
    "xs": dict(hidden_sizes=[96, 120, 144], neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384]),
    "s": dict(hidden_sizes=[144, 192, 240], neck_hidden_sizes=[16, 32, 64, 96, 128, 160, 640]),
}
DEFAULT_MODES = {"cuda": "fp32,bf16,bf16+cl,bf16+cl+compile", "cpu": "fp32,fp32+cl,bf16+cl,fp32+cl+compile"}


@dataclass(frozen=True)
class Mode:
    name: str
    bf16: bool
    channels_last: bool
    compile_mode: str | None  # None: eager
    graph: bool = False  # the whole step (train: TrainStep; infer: GraphedForward) replayed as one CUDA graph
    recipe: bool = False  # train.py's default recipe step (cached uint8 batches, crop/flip, mixup, clip, EMA)


def uses_cuda_graphs(mode: Mode) -> bool:
    """Whether a CUDA step of ``mode`` replays captured graphs (ours, or torch.compile's)."""
    return mode.graph or mode.recipe or mode.compile_mode in ("reduce-overhead", "max-autotune")


def parse_mode(text: str, default_compile_mode: str) -> Mode:
    """``fp32``/``bf16`` [``+cl``] [``+compile`` | ``+compile:<torch.compile mode>``] [``+graph``] [``+recipe``]."""
    tokens = text.strip().split("+")
    if tokens[0] not in ("fp32", "bf16"):
        raise ValueError(f"mode {text!r} must start with fp32 or bf16")
    compile_mode, channels_last, graph, recipe = None, False, False, False
    for token in tokens[1:]:
        if token == "cl":
            channels_last = True
        elif token == "compile" or token.startswith("compile:"):
            compile_mode = token.partition(":")[2] or default_compile_mode
        elif token == "graph":
            graph = True
        elif token == "recipe":
            recipe = True
        else:
            raise ValueError(
                f"unknown mode token {token!r} in {text!r} (expected cl, compile, compile:<mode>, graph, recipe)"
            )
    if graph and compile_mode in ("reduce-overhead", "max-autotune"):
        raise ValueError(f"{text!r}: +graph captures the step itself; combine it with plain +compile")
    return Mode(text.strip(), tokens[0] == "bf16", channels_last, compile_mode, graph, recipe)


@dataclass(frozen=True)
class Plan:
    warmup: int
    iters: int
    repeats: int


def plans(device: str, quick: bool) -> dict[str, Plan]:
    if device == "cuda":
        if quick:
            return {"train": Plan(5, 5, 3), "infer": Plan(5, 10, 3), "latency": Plan(5, 20, 3)}
        return {"train": Plan(10, 10, 5), "infer": Plan(10, 20, 5), "latency": Plan(10, 50, 5)}
    if quick:
        return {"train": Plan(1, 1, 2), "infer": Plan(1, 1, 3), "latency": Plan(3, 3, 7)}
    return {"train": Plan(2, 1, 5), "infer": Plan(2, 2, 5), "latency": Plan(5, 5, 11)}


# ---- the implementations -----------------------------------------------------------------------


class LogitsOnly(nn.Module):
    """transformers' models return an output object; the benchmark wants the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


def reference_block_forward(self: MobileViTBlock, x: Tensor) -> Tensor:
    """The MobileViT block as Fig. 1b draws it (conv_in before unfold, conv_out after fold), to measure
    the block's fast path (projections on the tokens, permutes of the narrower map) against."""
    y = self.conv_in(self.conv_local(x))
    batch, _, height, width = y.shape
    if height % self.patch_h or width % self.patch_w:
        return MobileViTBlock.forward(self, x)
    patches = self.norm(self.transformer(unfold_patches(y, self.patch_h, self.patch_w)))  # [B*P, N, d]
    y = self.conv_out(fold_patches(patches, batch, height, width, self.patch_h, self.patch_w))  # [B, C, H, W]
    return self.conv_fusion(torch.cat((x, y), dim=1))


def build_model(impl: str, variant: str, dropout: bool) -> nn.Module:
    """A freshly initialised 1000-class model; ``dropout=False`` turns off every dropout in all three.

    The libraries' defaults differ (ml-cvnets' 0.05 transformer / 0.1 head dropout here, none in
    timm, 0.1 everywhere in transformers), and dropout is real work, so by default none of them
    does any: the comparison is of the same network.
    """
    off = {} if dropout else {"drop_rate": 0.0, "dropout": 0.0}
    if impl == "ours":
        return mvt.create_model(f"mobilevit_{variant}", **off)
    if impl == "ours-ref":
        model = mvt.create_model(f"mobilevit_{variant}", **off)
        for module in model.modules():
            if isinstance(module, MobileViTBlock):
                module.forward = types.MethodType(reference_block_forward, module)
        return model
    if impl in ("ours-fnorm", "ours-lpln"):
        model = mvt.create_model(f"mobilevit_{variant}", **off)
        set_fused_norm(model)
        if impl == "ours-lpln":
            set_low_precision_layernorm(model)
        return model
    if impl in ("ours-fused", "ours-fused-ref", "ours-fused-mv2", "ours-fused-k"):
        model = fuse_for_inference(mvt.create_model(f"mobilevit_{variant}", **off))
        if impl == "ours-fused-mv2":
            set_mv2_kernel(model)
        if impl == "ours-fused-k":
            set_inference_kernels(model)
        if impl == "ours-fused-ref":
            for module in model.modules():
                if isinstance(module, ConvNormAct):
                    module.onednn_kernel = False
        return model
    if impl == "timm":
        import timm

        return timm.create_model(f"mobilevit_{variant}", **({} if dropout else {"drop_rate": 0.0}))
    if impl == "hf":
        import transformers

        hf_off = (
            {}
            if dropout
            else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout_prob": 0.0}
        )
        config = transformers.MobileViTConfig(num_labels=1000, **HF_CONFIGS[variant], **hf_off)
        return LogitsOnly(transformers.MobileViTForImageClassification(config))
    raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")


@dataclass
class Case:
    """One implementation x mode x phase: a step function with everything it needs already built."""

    device: str
    impl: str
    mode: Mode
    phase: str
    batch: int
    status: str = "ok"
    step: Callable[[], None] | None = None
    warmup_s: float | None = None
    peak_mib: float | None = None
    samples_s: list[float] = field(default_factory=list)  # seconds per iteration, one per timed block
    faults: list[float] = field(default_factory=list)  # CPU: minor page faults per iteration, one per block
    mem_base: int = 0

    @property
    def label(self) -> str:
        return f"{self.impl} {self.mode.name} {self.phase} b{self.batch}"


def build_step(case: Case, args: argparse.Namespace) -> Callable[[], None]:
    device, mode = torch.device(case.device), case.mode
    # Only a "cl" mode converts: otherwise each model keeps the layout it chose for itself.
    # The recipe mode trains as train.py does, with each library's default dropout.
    model = build_model(case.impl, args.variant, args.dropout == "default" or mode.recipe).to(device)
    x = torch.randn(case.batch, 3, args.img_size, args.img_size, device=device)
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (case.batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.bf16)
    cudagraph_step = mode.compile_mode is not None and device.type == "cuda"

    if case.phase == "train" and (mode.graph or mode.recipe):
        return train_py_step(model, case, x, y)
    if case.phase == "train":
        model.train()
        forward = torch.compile(model, mode=mode.compile_mode) if mode.compile_mode else model
        # train.py's optimizer: AdamW, fused kernels on CUDA.
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=device.type == "cuda")

        def step() -> None:
            if cudagraph_step:  # a new iteration: CUDA-graph outputs of the last one may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            with autocast:
                loss = F.cross_entropy(forward(x).float(), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    model.eval()
    forward = torch.compile(model, mode=mode.compile_mode) if mode.compile_mode else model
    if mode.graph:
        graphed = GraphedForward(forward, torch.bfloat16 if mode.bf16 else None)

        def replay() -> None:
            graphed(x)

        return replay

    def infer() -> None:
        if cudagraph_step:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.inference_mode(), autocast:
            forward(x)

    return infer


def train_py_step(model: nn.Module, case: Case, x: Tensor, y: Tensor) -> Callable[[], None]:
    """A training step built by the package's :class:`TrainStep`, the code ``train.py`` runs.

    ``+graph`` replays it as one CUDA graph. ``+recipe`` adds the rest of the default recipe's step:
    batches gathered from on-device uint8 images (as ``train.py``'s decoded cache) and cropped and
    flipped there, mixup 0.2, label smoothing 0.1, gradient clipping at 1.0, EMA; without it the
    step does what the other rows do (cross-entropy, backward, AdamW)."""
    mode, device = case.mode, x.device
    model.train()
    forward = torch.compile(model, mode=mode.compile_mode) if mode.compile_mode else model
    config = TrainConfig()
    recipe = (
        config.recipe if mode.recipe else RecipeConfig(mixup=0.0, label_smoothing=0.0, clip_grad=0.0, ema_decay=0.0)
    )
    optimizer = build_optimizer(model, TrainConfig(recipe=recipe), device, capturable=mode.graph)
    if mode.recipe:
        size = x.shape[-1]
        pre = Preprocessing().with_input_size(size)
        count = 8 * case.batch  # a cache of random photos: 8 steps per epoch
        images = torch.randint(0, 256, (count, 3, pre.resize_size, pre.resize_size), dtype=torch.uint8, device=device)
        labels = torch.randint(0, 1000, (count,), device=device)
        source = CachedTrainBatches(
            images, labels, batch_size=case.batch, img_size=size, pre=pre, recipe=recipe, seed=0
        )
        materialize = source.materialize
        batches = itertools.chain.from_iterable(source.epoch(epoch) for epoch in itertools.count())
        mixer = Mixer(recipe.mixup, recipe.cutmix, seed=0)
        mixes = mixer.epoch_params(0, 64).to(device)
    else:
        mixer, mixes = None, None
        static = Batch(x.shape[-1], {"x": x, "y": y})
        batches = itertools.repeat(static)

        def materialize(batch: Batch) -> tuple[Tensor, Tensor]:
            return batch.tensors["x"], batch.tensors["y"]

    step = TrainStep(
        model,
        forward,
        optimizer,
        materialize=materialize,
        num_classes=1000,
        label_smoothing=recipe.label_smoothing,
        mixer=mixer,
        clip_grad=recipe.clip_grad,
        ema=ModelEma(model, decay=recipe.ema_decay) if recipe.ema_decay > 0 else None,
        amp_dtype=torch.bfloat16 if mode.bf16 else None,
        scaler=torch.amp.GradScaler(device.type, enabled=False),
        memory_format=torch.channels_last if mode.channels_last else torch.contiguous_format,
        device=device,
        cuda_graphs=mode.graph,
    )
    counter = itertools.count()

    def run() -> None:
        i = next(counter)
        step([next(batches)], mixes[i % len(mixes) :][:1] if mixes is not None else None, 1e-3)

    return run


def minor_faults() -> int | None:
    """This process's minor page faults so far (None where the platform does not count them)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_block(step: Callable[[], None], iters: int, device: str, clock: Callable[[], float]) -> float:
    """Seconds per iteration over one block of ``iters`` back-to-back iterations."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            step()
        end.record()
        end.synchronize()  # the block's only host sync
        return start.elapsed_time(end) / 1e3 / iters
    begin = clock()
    for _ in range(iters):
        step()
    return (clock() - begin) / iters


def failure(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return f"failed: {type(error).__name__}: {message[:300]}"


def prepare(case: Case, args: argparse.Namespace, plan: Plan) -> None:
    """Build and warm up (compiling, autotuning, capturing graphs); record the peak memory of one more step."""
    cuda = case.device == "cuda"
    try:
        if cuda:
            gc.collect()  # what earlier cases left behind must not be freed inside this one's count
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            case.mem_base = torch.cuda.memory_allocated()
        else:
            gc.collect()
            case.mem_base = heap_allocated() or 0
        begin = time.perf_counter()
        case.step = build_step(case, args)
        for _ in range(plan.warmup):
            case.step()
        if cuda:
            torch.cuda.synchronize()
        case.warmup_s = time.perf_counter() - begin
        if cuda:  # one more step from a clean peak: compile-time autotuning buffers do not count
            setup_peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            case.step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            # A CUDA graph's activations live in its private pool, allocated while it was captured (in
            # the warm-up) and free, not "allocated", between replays: a replay's own peak misses them.
            if uses_cuda_graphs(case.mode):
                peak = max(peak, setup_peak)
            case.peak_mib = (peak - case.mem_base) / 2**20
        else:
            held = heap_allocated()
            step_peak = step_peak_bytes(case.step)
            if held is not None and step_peak is not None:
                case.peak_mib = (held - case.mem_base + step_peak) / 2**20
    except Exception as error:  # a failing implementation or compile mode is recorded, not fatal
        case.status, case.step = failure(error), None
        print(f"  {case.label}: {case.status}", flush=True)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def heap_allocated() -> int | None:
    """Bytes malloc has handed out and not got back (glibc's ``mallinfo2``: heap plus mmapped blocks).

    PyTorch's CPU tensors come from malloc, so the difference across building a case is what the case
    holds: weights, optimizer state, inputs, caches (compiled code adds a little). None off glibc."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc, or glibc older than 2.33
        return None
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def step_peak_bytes(step: Callable[[], None]) -> int | None:
    """The most bytes one call of ``step`` has allocated at any moment above what it started with.

    Read from the profiler's memory events (every CPU tensor allocation and free, in order)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = sorted(
            (event.start_ns(), event.nbytes())
            for event in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
            if event.name() == "[memory]" and event.device_type() == torch._C._autograd.DeviceType.CPU
        )
    except Exception:  # the profiler's raw events are not public API: the column is optional
        return None
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def release(cases: list[Case]) -> None:
    for case in cases:
        case.step = None
    gc.collect()
    if any(case.mode.compile_mode for case in cases):
        torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_group(cases: list[Case], args: argparse.Namespace, plan: Plan, deadline: float) -> None:
    """Interleave the implementations block by block on the CPU; run them one after another on CUDA.

    On a shared CPU, interleaving makes the ours/timm ratio robust to load that comes and goes. A
    GPU is not shared, and one implementation at a time keeps CUDA-graph memory pools apart.
    """
    interleave = cases[0].device == "cpu"
    clock = time.process_time if args.cpu_clock == "process" else time.perf_counter
    groups = [cases] if interleave else [[case] for case in cases]
    for group in groups:
        for case in group:
            if time.perf_counter() > deadline:
                case.status = "skipped: --time-budget reached"
                continue
            prepare(case, args, plan)
        try:
            for repeat in range(plan.repeats):
                # Rotate the order each round so no implementation always runs right after another.
                for case in group[repeat % len(group) :] + group[: repeat % len(group)]:
                    if case.step is None:
                        continue
                    try:
                        faults = minor_faults() if interleave else None
                        case.samples_s.append(time_block(case.step, plan.iters, case.device, clock))
                        if faults is not None:
                            # Fresh activation memory the kernel maps in on first touch: a CPU cost
                            # that depends on the allocator as much as on the model (see NOTES.md).
                            case.faults.append((minor_faults() - faults) / plan.iters)
                    except Exception as error:
                        case.status, case.step = failure(error), None
        finally:
            release(group)
        for case in group:
            if case.samples_s:
                print(f"  {case.label}: {describe(case)}", flush=True)


# ---- results -----------------------------------------------------------------------------------


def value(case: Case) -> float | None:
    """img/s for train/infer, ms for latency (medians of the timed blocks)."""
    if not case.samples_s:
        return None
    median = statistics.median(case.samples_s)
    return median * 1e3 if case.phase == "latency" else case.batch / median


def describe(case: Case) -> str:
    v = value(case)
    unit = "ms" if case.phase == "latency" else "img/s"
    text = f"{v:,.1f} {unit}" if v is not None else case.status
    if case.faults:
        text += f", {statistics.median(case.faults):,.0f} page faults/iter"
    if case.warmup_s is not None:
        text += f" (warm-up {case.warmup_s:.1f} s)"
    return text


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


# ---- main --------------------------------------------------------------------------------------


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


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PHASES = ("train", "infer", "latency")


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
