"""What ``bench_models.py`` measures: the implementations, the modes, and one case's step.

A :class:`Case` is one implementation x mode x phase; :func:`build_step` turns it into a function that
runs one training step or one inference forward on random data already on the device (``bench_timing``
warms it up and times it, ``bench_report`` turns the timings into the table and the headline).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

import mobilevit_torch as mvt  # noqa: E402
from mobilevit_torch.blocks import MobileViTBlock, fold_patches, set_mv2_kernel, unfold_patches  # noqa: E402
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

IMPLS = (
    "ours", "ours-ref", "ours-fnorm", "ours-lpln", "ours-fused", "ours-fused-ref", "ours-fused-mv2", "ours-fused-k",
    "timm", "hf",
)  # fmt: skip
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



def failure(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return f"failed: {type(error).__name__}: {message[:300]}"



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

