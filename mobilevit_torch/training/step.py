"""One optimizer update, written once for every device: run as it is on the CPU, one CUDA graph on a GPU.

An update is: for each of ``accum`` micro-batches, assemble the batch on the device (the data
path's ``materialize``), mix it, forward, loss, backward; then clip the gradients, step AdamW, zero
the gradients, update the EMA and the running loss/accuracy sums. Everything in :meth:`TrainStep._update`
is device work with no host synchronisation, so on a GPU it is captured once per batch shape as a
CUDA graph and replayed: one launch per update instead of about two thousand kernel launches from
Python. MobileViT-XXS is small enough that those launches, not the arithmetic, set an eager GPU
step's pace.

What changes between updates lives in device tensors that the host writes before each replay: the
batch (copied into the graph's input buffers), the learning rate (a device scalar the fused AdamW
reads), and the EMA weight. The host-side parts of an update (the learning-rate schedule, the EMA's
counter) run outside the graph.

Capturing needs a few uncaptured warm-up updates (lazy state, cuDNN's algorithm choice, autotuning
when compiled). They would change the weights, so everything they touch is saved first and put
back in place afterwards: the run is the same update sequence with or without graphs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mobilevit_torch.graphed import capture
from mobilevit_torch.training.ema import ModelEma
from mobilevit_torch.training.mixing import Mixer, smoothed_targets, soft_cross_entropy
from mobilevit_torch.training.pipeline import Batch

logger = logging.getLogger(__name__)

WARMUP_UPDATES = 3  # before each capture: enough for lazy optimizer state, cuDNN autotuning, compilation


class TrainStep:
    """Call with ``accum`` batches, their mixing rows (or ``None``) and the learning rate.

    ``model`` is the module whose parameters the optimizer holds; ``train_model`` is what runs the
    forward (the same module, or its DDP / ``torch.compile`` wrapper). :attr:`sums` holds float64
    device scalars ``loss`` (summed per image), ``correct`` and ``seen`` for the epoch so far.
    """

    def __init__(
        self,
        model: nn.Module,
        train_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        materialize: Callable[[Batch], tuple[Tensor, Tensor]],
        num_classes: int,
        label_smoothing: float,
        mixer: Mixer | None,
        clip_grad: float,
        ema: ModelEma | None,
        amp_dtype: torch.dtype | None,
        scaler: torch.amp.GradScaler,
        memory_format: torch.memory_format,
        device: torch.device,
        cuda_graphs: bool,
        distributed: bool = False,
    ) -> None:
        self.model, self.train_model, self.optimizer = model, train_model, optimizer
        self.materialize, self.num_classes, self.smoothing = materialize, num_classes, label_smoothing
        self.mixer, self.clip_grad, self.ema, self.scaler = mixer, clip_grad, ema, scaler
        self.memory_format, self.device, self.distributed = memory_format, device, distributed
        if cuda_graphs and (
            reason := self.graphs_possible(device, distributed=distributed, scaler_enabled=scaler.is_enabled())
        ):
            raise ValueError(f"CUDA graphs are not possible here: {reason}")
        self.graphs = cuda_graphs
        # Autocast's weight-cast cache must be off inside a graph capture (PyTorch's CUDA-graph notes).
        self.autocast = torch.autocast(
            device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None, cache_enabled=not cuda_graphs
        )
        self.sums = {name: torch.zeros((), device=device, dtype=torch.float64) for name in ("loss", "correct", "seen")}
        if cuda_graphs:
            self.lr = torch.zeros((), device=device)  # fused AdamW reads the rate from here on every replay
            for group in optimizer.param_groups:
                group["lr"] = self.lr
            self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[Batch], list[Tensor] | None]] = {}

    @staticmethod
    def graphs_possible(device: torch.device, *, distributed: bool, scaler_enabled: bool) -> str | None:
        """Why CUDA graphs cannot be used here, or ``None`` when they can."""
        if device.type != "cuda":
            return "not on a CUDA device"
        if distributed:
            return "several processes (DDP's gradient all-reduce is not captured)"
        if scaler_enabled:
            return "fp16 loss scaling (the GradScaler checks for overflow on the host every step)"
        return None

    def reset_sums(self, loss: float = 0.0, correct: float = 0.0, seen: float = 0.0) -> None:
        for name, value in (("loss", loss), ("correct", correct), ("seen", seen)):
            self.sums[name].fill_(value)  # in place: a captured graph adds into these tensors

    def __call__(self, batches: Sequence[Batch], mixes: Sequence[Tensor] | None, lr: float) -> None:
        if self.ema is not None:
            self.ema.advance()
        if not self.graphs:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._update(batches, mixes)
            return
        self.lr.fill_(lr)
        key = tuple((batch.size, tuple((k, v.shape, v.dtype) for k, v in batch.tensors.items())) for batch in batches)
        if key not in self._graphs:
            self._graphs[key] = self._capture(batches, mixes)
        graph, static_batches, static_mixes = self._graphs[key]
        for static, batch in zip(static_batches, batches, strict=True):
            for name, value in batch.tensors.items():
                static.tensors[name].copy_(value, non_blocking=True)
        if static_mixes is not None and mixes is not None:
            for static, mix in zip(static_mixes, mixes, strict=True):
                static.copy_(mix, non_blocking=True)
        graph.replay()

    # ---- the update: device work only --------------------------------------------------------

    def _update(self, batches: Sequence[Batch], mixes: Sequence[Tensor] | None) -> None:
        accum = len(batches)
        for i, batch in enumerate(batches):
            x, y = self.materialize(batch)
            targets = smoothed_targets(y, self.num_classes, self.smoothing)
            if self.mixer is not None and mixes is not None:
                x, targets = self.mixer.apply(x, targets, mixes[i])
            x = x.contiguous(memory_format=self.memory_format)
            last = i == accum - 1
            no_sync = self.train_model.no_sync() if self.distributed and not last else contextlib.nullcontext()
            with no_sync, self.autocast:
                logits = self.train_model(x)
            loss = soft_cross_entropy(logits.float(), targets)
            self.scaler.scale(loss / accum).backward()
            self.sums["loss"] += loss.detach() * y.shape[0]
            self.sums["correct"] += (logits.detach().argmax(1) == y).sum()
            self.sums["seen"] += y.shape[0]
        if self.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # Inside a graph the gradients must keep their buffers (the captured backward adds into them).
        self.optimizer.zero_grad(set_to_none=not self.graphs)
        if self.ema is not None:
            self.ema.apply(self.model)

    # ---- CUDA graphs -------------------------------------------------------------------------

    def _capture(
        self, batches: Sequence[Batch], mixes: Sequence[Tensor] | None
    ) -> tuple[torch.cuda.CUDAGraph, list[Batch], list[Tensor] | None]:
        static_batches = [Batch(b.size, {k: v.clone() for k, v in b.tensors.items()}) for b in batches]
        static_mixes = [m.clone() for m in mixes] if mixes is not None else None
        saved = self._state_tensors()
        backup = [t.clone() for t in saved]
        missing = self._optimizer_params_without_state()
        ema_updates = self.ema.updates if self.ema is not None else 0
        # One graph per batch shape, each with its own memory pool.
        graph, _, warm_s, capture_s = capture(lambda: self._update(static_batches, static_mixes), WARMUP_UPDATES)
        # Undo the warm-up updates in place (the graph holds these very tensors).
        with torch.no_grad():
            for tensor, value in zip(saved, backup, strict=True):
                tensor.copy_(value)
            for param in missing:  # optimizer state the warm-up created: fresh state is all zeros
                for value in self.optimizer.state[param].values():
                    if isinstance(value, Tensor):
                        value.zero_()
            for param in self.model.parameters():
                if param.grad is not None:
                    param.grad.zero_()
        if self.ema is not None:
            self.ema.updates = ema_updates
        logger.info(
            "captured the training step as a CUDA graph (batch %s at %d px): %.1f s of warm-up updates "
            "(cuDNN's algorithm search, compilation), %.1f s to capture",
            "+".join(str(len(next(iter(b.tensors.values())))) for b in batches),
            batches[0].size,
            warm_s,
            capture_s,
        )
        return graph, static_batches, static_mixes

    def _state_tensors(self) -> list[Tensor]:
        """Every tensor an update writes that exists before it: weights, buffers, optimizer state,
        EMA, sums (the EMA weight and the learning rate are rewritten before every update anyway)."""
        tensors: list[Tensor] = [t for t in self.model.state_dict().values()]
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, Tensor)]
        if self.ema is not None:
            tensors += list(self.ema.module.state_dict().values())
        tensors += list(self.sums.values())
        return tensors

    def _optimizer_params_without_state(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"] if p not in self.optimizer.state]
