"""The export request's arguments, checked without torch: formats, precisions, opsets, sizes, paths.

Everything here answers before torch is imported, so ``python export.py format=onnx opset=abc`` says
what is wrong at once. :func:`~mobilevit_torch.export.exporter.export_model` runs the same checks first;
:mod:`~mobilevit_torch.export.formats` adds to each format here the function that writes it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilevit_torch.export.errors import ONNX_MODULES, TFLITE_MODULES, ExportError
from mobilevit_torch.files import existing_path
from mobilevit_torch.hub_ids import is_hub_id

MIN_OPSET = 18  # the lowest opset torch 2.14's exporter implements
MAX_OPSET = 23  # torch.onnx's ONNX_MAX_OPSET in torch 2.14
DEFAULT_OPSET = 18  # the most widely supported by runtimes and by onnx2tf

TFLITE_PRECISIONS = ("fp32", "fp16", "int8_dynamic", "int8_mixed", "int8")
# Calibrated on real images: int8 activations need their ranges.
CALIBRATED = ("int8_mixed", "int8")


@dataclass(frozen=True)
class FormatSpec:
    name: str
    suffix: str
    precisions: tuple[str, ...]
    modules: dict[str, str]  # import name -> package, checked before any work


SPECS: dict[str, FormatSpec] = {
    "onnx": FormatSpec("onnx", ".onnx", ("fp32",), ONNX_MODULES),
    "tflite": FormatSpec("tflite", ".tflite", TFLITE_PRECISIONS, TFLITE_MODULES),
}


def get_spec(name: str) -> FormatSpec:
    if name not in SPECS:
        raise ExportError(f"unknown format {name!r}: choose one of {', '.join(SPECS)}")
    return SPECS[name]


def check_precision(spec: FormatSpec, precision: str) -> None:
    if precision in spec.precisions:
        return
    others = [f.name for f in SPECS.values() if precision in f.precisions]
    hint = f" (precision={precision} is available with format={'|'.join(others)})" if others else ""
    raise ExportError(
        f"format={spec.name} does not support precision={precision}: choose {'|'.join(spec.precisions)}{hint}"
    )


def check_arguments(
    *,
    format: str,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    img_size: int | None = None,
    dynamic_batch: bool = False,
    calib_images: int = 100,
    check_images: int = 32,
    seed: int = 0,
    output: str | Path | None = None,
    data_root: str | Path | None = None,
    checkpoint: str | Path | None = None,
    model: str | None = None,
    pretrained: bool | str | Path | None = None,
    num_classes: int | None = None,
) -> FormatSpec:
    """Check the arguments of :func:`~mobilevit_torch.export.exporter.export_model` that need no model
    (its defaults are these); the format's spec. Raises :class:`ExportError` naming the first bad one."""
    spec = get_spec(format)
    check_precision(spec, precision)
    _check_int("opset", opset, low=MIN_OPSET, high=MAX_OPSET)
    if img_size is not None:
        _check_int("img_size", img_size, low=32)
        if img_size % 32:
            raise ExportError(f"img_size must be a multiple of 32 (the network's stride), got {img_size}")
    if not isinstance(dynamic_batch, bool):
        raise ExportError(f"dynamic_batch must be true or false, got {dynamic_batch!r}")
    if dynamic_batch and spec.name != "onnx":
        raise ExportError(f"dynamic_batch applies to format=onnx; a {spec.name} file has batch 1")
    _check_int("calib_images", calib_images, low=1)
    _check_int("check_images", check_images, low=1)
    _check_int("seed", seed, low=0)
    if output is not None and Path(output).expanduser().is_dir():
        raise ExportError(f"output={output} is a folder: name the file, e.g. output={output}/model{spec.suffix}")
    if output is not None and Path(output).suffix != spec.suffix:
        raise ExportError(f"output {output} must end in {spec.suffix} for format={spec.name}")
    if output is not None:
        check_output_folder(Path(output).expanduser(), create=False)
    if data_root is not None and not Path(data_root).expanduser().is_dir():
        raise ExportError(f"data.root: no such folder: {data_root}")
    check_source(checkpoint=checkpoint, model=model, pretrained=pretrained, num_classes=num_classes)
    return spec


def check_source(
    *,
    checkpoint: str | Path | None,
    model: str | None,
    pretrained: bool | str | Path | None,
    num_classes: int | None = None,
) -> bool | str | None:
    """What to export, as far as names and paths tell: one of ``checkpoint`` or ``model`` (+
    ``pretrained``), the named files there and ``num_classes``' form (whether it matches the weights
    needs them read). Returns ``pretrained`` as ``create_model`` takes it."""
    if num_classes is not None and (type(num_classes) is not int or num_classes < 1):
        raise ExportError(f"num_classes must be a positive integer, got {num_classes!r}")
    if checkpoint is None:
        if model is None:
            raise ExportError("nothing to export: pass checkpoint=PATH, or model=xxs|xs|s (with pretrained=PATH)")
        if pretrained in (None, False, True):
            return pretrained
        pretrained = str(pretrained)
        if not Path(pretrained).expanduser().exists() and not is_hub_id(pretrained):
            raise ExportError(f"pretrained weights not found: {pretrained} (no such file or folder)")
        return pretrained
    if pretrained not in (None, False):
        raise ExportError("pass either checkpoint=PATH or pretrained=PATH (with model=...), not both")
    try:
        existing_path(checkpoint, "checkpoint")
    except FileNotFoundError as error:
        raise ExportError(str(error)) from None
    return None


def _check_int(name: str, value: Any, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExportError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ExportError(f"{name} must be {span}, got {value}")


def check_output_folder(path: Path, *, create: bool) -> None:
    """Make sure the exported file, its sidecar and labels can be written beside ``path``; one line when
    not. With ``create`` the folder is made when missing; without, nothing is left behind: the first
    missing folder is made and removed again, or a scratch file in the existing one."""
    folder = path.parent
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"output={path}: {ancestor} is a file, not a folder")
    if folder != ancestor and not create:
        probe = ancestor / folder.relative_to(ancestor).parts[0]
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as error:
            raise ExportError(f"output={path}: cannot create the folder {folder} ({error.strerror or error})") from None
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"output={path}: cannot create the folder {folder} ({error.strerror or error})") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ExportError(f"output={path}: cannot write in {folder} ({error.strerror or error})") from None
