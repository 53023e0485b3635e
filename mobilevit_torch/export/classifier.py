"""An exported file as a classifier: ``evaluate.py`` and ``predict.py`` given a ``.onnx`` or ``.tflite``.

The file runs as an app runs it (ONNX Runtime or the LiteRT interpreter, on the CPU; a full-integer
file's input quantised and its output dequantised with the scales stored in it), fed the
preprocessing and read with the class names its sidecar (``<file>.json``, written by the export)
records. Behind the forward of a PyTorch classifier, so scoring a folder or ranking images is the
same code for a checkpoint and for what was shipped: the accuracy an int8 file keeps is measured,
not assumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mobilevit_torch.export.errors import ExportError
from mobilevit_torch.export.runtime import Runner, open_runner
from mobilevit_torch.export.sidecar import sidecar_path
from mobilevit_torch.preprocessing import Preprocessing

EXPORTED_SUFFIXES = (".onnx", ".tflite")
_SIDECAR_ENDINGS = tuple(suffix + tail for suffix in EXPORTED_SUFFIXES for tail in (".json", ".labels.txt"))


def is_exported(path: Path) -> bool:
    """Whether ``path`` names an exported file (any case) or one of its sidecars (:func:`load_exported` tells which)."""
    return path.suffix.lower() in EXPORTED_SUFFIXES or path.name.lower().endswith(_SIDECAR_ENDINGS)


class ExportedClassifier(nn.Module):
    """``forward``: preprocessed images ``[N, 3, S, S]`` float32 -> the file's logits ``[N, classes]``
    (float32, on the images' device). ``class_names``, ``preprocessing``, ``num_classes`` and
    ``model_name`` are the sidecar's; the file itself holds no PyTorch parameters."""

    def __init__(
        self, path: Path, runner: Runner, *, class_names: list[str], preprocessing: Preprocessing, model_name: str
    ) -> None:
        super().__init__()
        self.path = path
        self.runner = runner
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.preprocessing = preprocessing
        self.model_name = model_name

    def forward(self, x: Tensor) -> Tensor:
        logits = self.runner(x.detach().float().cpu().numpy())  # [N, 3, S, S] -> [N, classes]
        return torch.from_numpy(logits).to(x.device)


def load_exported(path: str | Path, *, threads: int | None = None) -> ExportedClassifier:
    """The exported ``path`` with its sidecar, ready to classify; ``threads`` fixes the runtime's CPU
    threads (None: its own choice). :class:`ExportError` (one line) for a missing or unusable sidecar,
    a file its runtime cannot open, or a file whose input size or number of classes is not the sidecar's."""
    path = Path(path).expanduser()
    if path.name.lower().endswith(_SIDECAR_ENDINGS):
        model = path.name[: -len(".json")] if path.name.lower().endswith(".json") else path.name[: -len(".labels.txt")]
        raise ExportError(f"{path} is a sidecar of the exported file {model}: pass {path.with_name(model)} itself")
    if path.suffix.lower() not in EXPORTED_SUFFIXES:
        raise ExportError(f"{path}: an exported model is a .onnx or .tflite file")
    if path.is_dir():
        raise ExportError(f"{path} is a folder, not an exported file")
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    sidecar, preprocessing = _read_sidecar(path)
    try:
        runner = open_runner(path, threads=threads)
    except ExportError:  # the runtime is not installed: the install command says what to run
        raise
    except Exception as error:  # each runtime has its own exceptions for a file it cannot read
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"{path} cannot be run by its runtime: {first}") from None
    size, expected, output = preprocessing.input_size, runner.describe()["input"], runner.describe()["output"]
    sides = expected["shape"][2:4] if expected["layout"] == "NCHW" else expected["shape"][1:3]  # NHWC: [N, H, W, 3]
    if list(sides) != [size, size]:
        raise ExportError(
            f"{path} takes {expected['shape']} input, but its sidecar's preprocessing makes {size} x {size} images"
        )
    classes, names = _output_classes(output["shape"]), sidecar["class_names"]
    if classes is not None and classes != len(names):  # output i is read as names[i]: the counts must agree
        raise ExportError(
            f"{path} gives {classes} class scores, but its sidecar names {len(names)} classes "
            "(a sidecar of another export, or edited)"
        )
    name = f"{sidecar.get('model', 'model')} ({sidecar.get('format')} {sidecar.get('precision')})"
    return ExportedClassifier(path, runner, class_names=names, preprocessing=preprocessing, model_name=name)


def exported_device(device: str) -> str:
    """Where an exported file runs: on the CPU, in its runtime, as an app runs it. ``auto`` and ``cpu``
    mean that; a GPU is refused in one line rather than silently not used."""
    if device in ("auto", "cpu", "cpu:0"):
        return "cpu"
    raise ExportError(
        f"device {device!r}: an exported file runs on the CPU, in ONNX Runtime or LiteRT as an app runs it "
        "(use --device cpu or auto)"
    )


def _read_sidecar(path: Path) -> tuple[dict[str, Any], Preprocessing]:
    """``<file>.json`` and its preprocessing, checked for what classifying needs: class names, preprocessing."""
    json_path = sidecar_path(path)
    if not json_path.is_file() and sidecar_path(path.resolve()).is_file():  # a link to the file: beside the file
        json_path = sidecar_path(path.resolve())
    if not json_path.is_file():
        raise ExportError(
            f"{path} has no sidecar {json_path.name} beside it (export.py writes one; it holds the class names "
            "and the preprocessing the file needs)"
        )
    try:
        sidecar = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportError(f"{json_path} cannot be read as JSON: {error}") from None
    names = sidecar.get("class_names") if isinstance(sidecar, dict) else None
    pre = sidecar.get("preprocessing") if isinstance(sidecar, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ExportError(f"{json_path} is not an export sidecar: it has no list of class names")
    if not isinstance(pre, dict):
        raise ExportError(f"{json_path} is not an export sidecar: it has no preprocessing")
    try:
        preprocessing = Preprocessing.from_dict({k: v for k, v in pre.items() if k != "steps"})  # steps: in words
    except (AttributeError, TypeError, ValueError) as error:
        raise ExportError(f"{json_path} has no usable preprocessing: {error}") from None
    return sidecar, preprocessing


def _output_classes(shape: list[Any]) -> int | None:
    """The class count of an output shape ``[N, classes]``, or None where the file leaves it symbolic."""
    last = shape[-1] if shape else None
    return last if isinstance(last, int) and last > 0 else None
