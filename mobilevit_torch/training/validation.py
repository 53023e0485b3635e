"""One validation pass: loss, accuracy and confusion matrix, reduced across ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobilevit_torch.metrics import confusion_matrix
from mobilevit_torch.training.distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager,
    memory_format: torch.memory_format,
    info: DistInfo,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> tuple[float, float, Tensor]:
    """Loss, accuracy and confusion matrix over this rank's share, reduced across ranks.

    ``forward`` (default ``model``) computes the logits, e.g. a :class:`GraphedForward` of ``model``.
    A batch's ``x`` may end with padding images beyond its ``len(y)`` labels (one input shape for
    every batch); their logits are dropped."""
    was_training = model.training
    model.eval()
    forward = forward or model
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for x, y in batches:
        with autocast:
            logits = forward(x.contiguous(memory_format=memory_format))[: len(y)].float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        confusion += confusion_matrix(logits.argmax(1), y, num_classes)
    all_reduce_sum(loss_sum, info)
    all_reduce_sum(confusion, info)
    model.train(was_training)
    count = max(int(confusion.sum()), 1)
    return loss_sum.item() / count, confusion.diag().sum().item() / count, confusion
