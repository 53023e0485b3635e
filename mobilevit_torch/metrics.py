"""Classification metrics computed on the device that holds the predictions.

The confusion matrix is the one accumulator: accuracy and per-class accuracy are read off it, so a
training loop or an evaluation keeps a single ``[C, C]`` tensor on the GPU and reads it back once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Counts ``cm[true, predicted]`` as an int64 ``[num_classes, num_classes]`` tensor on ``preds``' device.

    Args:
        preds: predicted class ids, any shape (flattened).
        targets: true class ids, the same number of elements as ``preds``.
        num_classes: the number of classes ``C``; every id must lie in ``[0, C)``.

    Raises:
        ValueError: for mismatched sizes or an id outside ``[0, C)``.
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if preds.is_floating_point() or targets.is_floating_point():
        raise ValueError("preds and targets must hold integer class ids (take logits.argmax(1) first)")
    preds, targets = preds.reshape(-1), targets.reshape(-1)  # any shape -> [N]
    if preds.numel() != targets.numel():
        raise ValueError(f"preds has {preds.numel()} elements but targets has {targets.numel()}")
    preds, targets = preds.long(), targets.to(device=preds.device, dtype=torch.long)
    cells = num_classes * num_classes
    invalid = (preds < 0) | (preds >= num_classes) | (targets < 0) | (targets >= num_classes)
    # An out-of-range id would otherwise land in a neighbouring cell (target 0, pred C is cell
    # [1, 0]). Such pairs go to one bin past the matrix instead; bincount sizes its output by the
    # largest value (its one host synchronisation on CUDA), so the output's length, known on the
    # host, tells whether any id was out of range without reading a value back.
    flat = (targets * num_classes + preds).masked_fill(invalid, cells)
    counts = torch.bincount(flat, minlength=cells)
    if counts.numel() > cells:
        ids = torch.cat([preds, targets])
        bad = ids[(ids < 0) | (ids >= num_classes)].unique().tolist()
        raise ValueError(f"class ids {bad} are outside [0, {num_classes}) for a {num_classes}-class confusion matrix")
    return counts.reshape(num_classes, num_classes)  # [C * C] -> [C (true), C (predicted)]


def accuracy_from_confusion(cm: Tensor) -> float:
    """Fraction of samples on the diagonal; ``nan`` for an empty matrix (no samples, no accuracy)."""
    total = int(cm.sum())
    return float(cm.diagonal().sum()) / total if total else math.nan


def per_class_accuracy(cm: Tensor) -> list[float]:
    """Recall of each true class (row): ``cm[c, c] / cm[c].sum()``, ``nan`` for a class with no samples."""
    correct = cm.diagonal().tolist()
    totals = cm.sum(dim=1).tolist()
    return [c / t if t else math.nan for c, t in zip(correct, totals, strict=True)]


def topk_correct(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """How many rows of ``logits`` ``[B, C]`` have their target among the ``k`` largest, as a 0-d int64
    tensor on ``logits``' device (summing it over batches needs no host synchronisation).

    Raises:
        ValueError: for ``k`` outside ``[1, C]`` (``torch.topk``'s own error would not name ``k``).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {tuple(logits.shape)}")
    num_classes = logits.shape[1]
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must be in [1, {num_classes}] for {num_classes} classes, got {k}")
    top = logits.topk(k, dim=1).indices  # [B, k]
    return (top == targets.reshape(-1, 1).to(top.device)).any(dim=1).sum()
