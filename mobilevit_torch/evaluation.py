"""Use a trained model: load it from a training checkpoint, score it on an image folder, classify images.

Library code for ``evaluate.py`` and ``predict.py`` (and notebooks): plain arguments in, plain
results out, and every user mistake (a missing file, a folder class the model never saw, a broken
image) raised as a short error that names the path, never a traceback from deep inside torch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mobilevit_torch.checkpoint import CheckpointError, read_checkpoint
from mobilevit_torch.checks import check_count, type_name
from mobilevit_torch.data.folder import DataError, Sample, scan_image_folder
from mobilevit_torch.data.images import BadImageError, load_rgb, pil_to_rgb
from mobilevit_torch.data.transforms import eval_transform
from mobilevit_torch.metrics import accuracy_from_confusion, confusion_matrix, per_class_accuracy, topk_correct
from mobilevit_torch.models.fuse import fuse_for_inference, is_fused
from mobilevit_torch.registry import UnknownModelError, create_model
from mobilevit_torch.weights import WeightsError

logger = logging.getLogger("mobilevit_torch")


class EvaluationError(ValueError):
    """A model, checkpoint or request that cannot be evaluated as asked; the message says why."""


# What a command-line entry point answers with one line instead of a traceback: each means the
# input (a path, a file, a folder, a device) was wrong, not the code. OSError covers missing and
# unwritable paths.
USER_ERRORS: tuple[type[Exception], ...] = (
    EvaluationError,
    DataError,
    BadImageError,
    WeightsError,
    UnknownModelError,
    OSError,
)


@dataclass
class EvalResult:
    """What :func:`evaluate_folder` measured.

    ``confusion`` is ``cm[true, predicted]`` over all of the model's ``class_names`` (a folder may
    hold only some of them, and the model may predict any); ``per_class`` covers the classes the
    folder holds. ``skipped`` lists ``(path, reason)`` for each file that could not be read; those
    files count in neither ``num_images`` nor the accuracies.
    """

    accuracy: float
    top5: float | None
    per_class: dict[str, float]
    confusion: Tensor
    class_names: list[str]
    num_images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def observed(self) -> tuple[Tensor, list[str]]:
        """The confusion matrix restricted to classes that occur as a true label or a prediction.

        A 1000-class ImageNet model scored on five folders would otherwise plot a 1000 x 1000 grid.
        """
        used = (self.confusion.sum(dim=0) + self.confusion.sum(dim=1)).nonzero().flatten()  # [K, 1] -> [K]
        return self.confusion[used][:, used], [self.class_names[i] for i in used.tolist()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN accuracies (never, for a class the folder holds) become ``None``."""
        return {
            "accuracy": _json_float(self.accuracy),
            "top5": _json_float(self.top5),
            "num_images": self.num_images,
            "per_class": {name: _json_float(value) for name, value in self.per_class.items()},
            "images_per_class": {
                name: int(self.confusion[self.class_names.index(name)].sum()) for name in self.per_class
            },
            "class_names": list(self.class_names),
            "confusion": self.confusion.tolist(),
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
        }


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when available; asking for an unavailable CUDA (or a GPU index this machine
    lacks, or a device type the model is not run on here, such as ``mps`` or ``meta``) is an error,
    not a silent CPU run or a traceback later."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise EvaluationError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type not in ("cpu", "cuda") or (resolved.type == "cpu" and resolved.index not in (None, 0)):
        raise EvaluationError(f"unsupported device {device!r} (use auto, cpu, cuda or cuda:N)")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"device {device!r} was requested but CUDA is not available here (use --device cpu)")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise EvaluationError(
            f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return resolved


def load_model_from_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild the model a mobilevit-torch training checkpoint describes, with its weights, class
    names and preprocessing, in eval mode on the CPU.

    Raises:
        FileNotFoundError: no file at ``path``.
        EvaluationError: ``path`` is a folder, unreadable, or not a mobilevit-torch training checkpoint.
    """
    path = Path(path).expanduser()
    try:
        payload = read_checkpoint(path)
    except CheckpointError as error:
        raise EvaluationError(str(error)) from None
    return create_model(payload["model_name"], pretrained=path).eval()


def evaluate_folder(
    model: nn.Module,
    root: str | Path,
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> EvalResult:
    """Accuracy, top-5 and per-class accuracy of ``model`` on ``root/<class>/**/<image>``.

    Class folders are matched to ``model.class_names`` by name, not by position, so a test folder
    may hold any subset of the training classes; a folder the model does not know is an error.
    Images get the model's own evaluation preprocessing (``model.preprocessing``). A file that
    cannot be decoded is skipped with one warning and listed in ``EvalResult.skipped``.
    The images run through a copy of ``model`` with BatchNorm folded (see :func:`inference_model`).
    """
    batch_size = check_count("batch_size", batch_size, minimum=1, error=EvaluationError)
    num_workers = check_count("num_workers", num_workers, minimum=0, error=EvaluationError)
    _check_classifier(model)
    class_names = _class_names(model, required=True)
    num_classes = len(class_names)
    root = Path(root).expanduser()
    for split in ("val", "test"):
        if (root / split).is_dir() and split not in class_names:
            raise EvaluationError(
                f"{root} holds a {split}/ folder, not class folders: pass {root / split} to evaluate those images"
            )
    samples, _ = scan_image_folder(root, class_names=class_names)  # DataError names unknown folders
    device = resolve_device(device)

    dataset = _ImageSamples(samples, eval_transform(model.preprocessing))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate_readable,
        pin_memory=device.type == "cuda",
    )
    preds: list[Tensor] = []
    targets: list[Tensor] = []
    top5_hits = torch.zeros((), dtype=torch.long, device=device)
    skipped: list[tuple[str, str]] = []
    with inference_model(model, device) as runner, torch.inference_mode():
        # leave=True: the finished bar ends its line, so results printed after it (stdout and stderr
        # going to one file) start on a line of their own
        for images, labels, unreadable in tqdm(
            loader, desc=f"evaluating {root.name}", unit="batch", disable=not progress, leave=True
        ):
            for path, reason in unreadable:
                logger.warning("skipping unreadable image %s: %s", path, reason)
                skipped.append((path, reason))
            if images is None:
                continue
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            logits = runner(images)
            # Predictions stay on the device; the one read-back happens in confusion_matrix below.
            preds.append(logits.argmax(dim=1))
            targets.append(labels)
            if num_classes >= 5:
                top5_hits += topk_correct(logits, labels, 5)

    if not preds:
        raise EvaluationError(f"none of the {len(samples)} image files under {root} could be read")
    cm = confusion_matrix(torch.cat(preds), torch.cat(targets), num_classes).cpu()
    num_images = int(cm.sum())
    recalls = per_class_accuracy(cm)
    present = {sample.label for sample in samples}
    return EvalResult(
        accuracy=accuracy_from_confusion(cm),
        top5=top5_hits.item() / num_images if num_classes >= 5 else None,
        per_class={class_names[i]: recalls[i] for i in range(num_classes) if i in present},
        confusion=cm,
        class_names=list(class_names),
        num_images=num_images,
        skipped=skipped,
    )


def predict_images(
    model: nn.Module,
    paths: Sequence[str | os.PathLike[str] | Image.Image] | str | os.PathLike[str] | Image.Image,
    *,
    topk: int = 5,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> list[list[tuple[str, float]]]:
    """The ``topk`` most probable classes of each image, as ``(class name, probability)`` pairs.

    ``paths`` holds image files (``str`` or ``os.PathLike``) and/or PIL images, in any mix; a PIL
    image is read as its file would be (EXIF orientation applied, converted to RGB) and is not
    changed; anything else is a ``TypeError`` naming it. Results line up with ``paths``, so an
    unreadable image is an error naming it (:class:`~mobilevit_torch.data.images.BadImageError`), not
    a skip that would shift every later answer. All paths are checked for existence before any work;
    a folder is an error too (list its images with :func:`~mobilevit_torch.data.folder.list_image_files`,
    as ``predict.py`` does). One path or image on its own counts as ``[it]``. ``topk`` is capped at the
    number of classes; a model without class names (e.g. ImageNet weights from timm) reports class ids.
    The images run through a copy of ``model`` with BatchNorm folded (see :func:`inference_model`).
    """
    topk = check_count("topk", topk, minimum=1, error=EvaluationError)
    batch_size = check_count("batch_size", batch_size, minimum=1, error=EvaluationError)
    items = _image_items(paths)
    files = [p for p in items if isinstance(p, Path)]
    folders = [p for p in files if p.is_dir()]
    if folders:
        raise BadImageError(
            folders[0], "is a folder, not an image file; pass the images in it (list_image_files(folder) lists them)"
        )
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise BadImageError(missing[0], f"no such file{more}")
    _check_classifier(model)
    names = _class_names(model, required=False)
    device = resolve_device(device)
    transform = eval_transform(model.preprocessing)

    results: list[list[tuple[str, float]]] = []
    with inference_model(model, device) as runner, torch.inference_mode():
        for start in range(0, len(items), batch_size):
            chunk = range(start, min(start + batch_size, len(items)))
            images = torch.stack([transform(_read_rgb(items[i], i)) for i in chunk]).to(device)
            probs = runner(images).float().softmax(dim=1)  # [B, C]
            top = probs.topk(min(topk, probs.shape[1]), dim=1)
            for values, indices in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                results.append([(names[i] if names else str(i), p) for i, p in zip(indices, values, strict=True)])
    return results


def _image_items(images: Any) -> list[Path | Image.Image]:
    """``predict_images``' input as a list of expanded paths and PIL images; any other item is a TypeError."""
    if isinstance(images, (str, os.PathLike, Image.Image)):  # a string would otherwise be one "path" per character
        images = [images]
    accepted = "image files (str or os.PathLike) or PIL images"
    not_a_list = f"predict_images() takes {accepted}, one or a list; got {type_name(images)}"
    if isinstance(images, (Tensor, bytes, bytearray)) or hasattr(images, "__array__"):  # iterable, but not by image
        raise TypeError(not_a_list)
    try:
        items = list(images)
    except TypeError:
        raise TypeError(not_a_list) from None
    for index, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike, Image.Image)):
            raise TypeError(f"predict_images() takes {accepted}; item {index} is {type_name(item)}")
    return [item if isinstance(item, Image.Image) else Path(item).expanduser() for item in items]


def _read_rgb(item: Path | Image.Image, index: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return pil_to_rgb(item, name=f"<PIL image, item {index}>")
    return load_rgb(item)


@contextlib.contextmanager
def inference_model(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` as inference should run it: in eval mode on ``device``, BatchNorm folded into the convolutions.

    Folding (:func:`~mobilevit_torch.models.fuse_for_inference`) works on a copy, so ``model`` itself
    is left as it was. The copy costs about two batch-1 forwards of XXS on a CPU (~40 ms) and then
    takes about a quarter off every forward (``benchmarks/NOTES.md``). A model that is already fused
    is used as it is (moved to ``device``, its train/eval mode restored afterwards), so a caller
    classifying images one call at a time can fuse once and pass the fused model.
    """
    if not is_fused(model):
        # Copied outside inference mode: tensors created inside it could never be trained again.
        yield fuse_for_inference(model).to(device)
        return
    was_training = model.training
    model.to(device).eval()
    try:
        yield model
    finally:
        model.train(was_training)


class _ImageSamples(Dataset):
    """``(image, label, path, None)`` per sample, or ``(None, label, path, reason)`` for an unreadable file."""

    def __init__(self, samples: list[Sample], transform: Any) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, str, str | None]:
        sample = self.samples[index]
        try:
            image = load_rgb(sample.path)
        except BadImageError as error:
            # Reported from the main process: warnings raised inside a worker can be lost.
            return None, sample.label, sample.path, error.reason
        return self.transform(image), sample.label, sample.path, None


def _collate_readable(
    items: list[tuple[Tensor | None, int, str, str | None]],
) -> tuple[Tensor | None, Tensor, list[tuple[str, str]]]:
    """Stack the readable images of a batch; hand the unreadable ones back as ``(path, reason)``."""
    readable = [(image, label) for image, label, _, reason in items if reason is None]
    unreadable = [(path, reason) for _, _, path, reason in items if reason is not None]
    if not readable:
        return None, torch.empty(0, dtype=torch.long), unreadable
    images = torch.stack([image for image, _ in readable])  # [B, 3, S, S]
    labels = torch.tensor([label for _, label in readable], dtype=torch.long)
    return images, labels, unreadable


def _check_classifier(model: nn.Module) -> None:
    """Refuse a model whose outputs are not class scores for RGB images: without a classifier (a
    ``features_only`` backbone, ``num_classes=0``) its pooled features would be ranked as if they were
    classes, and a model built with ``in_chans != 3`` would fail inside its first convolution."""
    if getattr(model, "num_classes", None) == 0 or hasattr(model, "out_indices"):
        raise EvaluationError(
            "the model has no classifier (a features_only backbone, or num_classes=0): its outputs are "
            "features, not class scores; load a trained classifier (reset_classifier(n) adds an untrained one)"
        )
    stem = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if stem is not None and stem.in_channels != 3:
        raise EvaluationError(
            f"the model takes {stem.in_channels}-channel input (in_chans={stem.in_channels}), but images are read "
            "as 3-channel RGB: feed such a model tensors yourself"
        )


def _class_names(model: nn.Module, *, required: bool) -> list[str] | None:
    names = getattr(model, "class_names", None)
    num_classes = getattr(model, "num_classes", None)
    if not names:
        if required:
            raise EvaluationError(
                "the model has no class names, so class folders cannot be matched to its outputs; "
                "load it from a mobilevit-torch training checkpoint or set model.class_names"
            )
        return None
    if num_classes is not None and len(names) != num_classes:
        raise EvaluationError(f"the model has {num_classes} outputs but {len(names)} class names")
    return list(names)


def _json_float(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value
