"""Inference forward passes replayed as CUDA graphs: one launch per batch instead of hundreds.

MobileViT-XXS runs a few hundred small kernels per forward; on a large GPU launching them from
Python takes longer than running them. :class:`GraphedForward` captures ``model(x)`` once per
input shape (and dtype/layout) and afterwards copies each batch into the captured input buffer and
replays. The returned logits live in the graph's output buffer: the next call overwrites them, so
use (or copy) them before calling again. :func:`capture` is the capture itself, shared with the
training step (``training/step.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

WARMUP_CALLS = 2  # uncaptured calls before a capture: cuDNN's algorithm choice, lazy initialisation

T = TypeVar("T")


def capture(fn: Callable[[], T], warmup_calls: int) -> tuple[torch.cuda.CUDAGraph, T, float, float]:
    """``fn()`` run ``warmup_calls`` times on a side stream, then once captured as a CUDA graph (its own
    memory pool), as PyTorch's CUDA-graph notes prescribe. Returns the graph, what the captured call
    returned (tensors the graph's replays write), and the seconds of warm-up and of capture."""
    begin = time.perf_counter()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_calls):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # synchronises on entry
        warmed = time.perf_counter()
        out = fn()
    return graph, out, warmed - begin, time.perf_counter() - warmed


class GraphedForward:
    """``GraphedForward(model, dtype)(x)``: ``model(x)`` under ``torch.inference_mode`` (and autocast
    to ``dtype`` when given), captured as a CUDA graph per distinct input shape; a plain call on the CPU.

    Each graph has its own memory pool: a graph's output stays alive between calls, and a shared
    pool would let another graph's replay write over it."""

    def __init__(self, model: nn.Module | Callable[[Tensor], Tensor], dtype: torch.dtype | None = None) -> None:
        self.model, self.dtype = model, dtype
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}

    def _forward(self, x: Tensor) -> Tensor:
        # Autocast's cast cache must be off inside a capture (PyTorch's CUDA-graph notes).
        autocast = torch.autocast(
            x.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None, cache_enabled=False
        )
        with torch.inference_mode(), autocast:
            return self.model(x)

    def __call__(self, x: Tensor) -> Tensor:
        if x.device.type != "cuda":
            return self._forward(x)
        contiguous = x.is_contiguous()
        key = (tuple(x.shape), x.dtype, contiguous, x.device)
        if key not in self._graphs:
            static_x = x.clone(memory_format=torch.contiguous_format if contiguous else torch.channels_last)
            graph, static_out, warm_s, capture_s = capture(lambda: self._forward(static_x), WARMUP_CALLS)
            self._graphs[key] = (graph, static_x, static_out)
            logger.info(
                "captured a forward pass as a CUDA graph (input %s): %.1f s of warm-up calls, %.1f s to capture",
                "x".join(map(str, x.shape)),
                warm_s,
                capture_s,
            )
        graph, static_x, static_out = self._graphs[key]
        static_x.copy_(x, non_blocking=True)
        graph.replay()
        return static_out
