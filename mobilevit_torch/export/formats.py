"""The format table: each export format's file suffix, precisions, packages, and the one function that writes it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mobilevit_torch.export.request import SPECS, FormatSpec
from mobilevit_torch.export.to_onnx import export_onnx
from mobilevit_torch.export.to_tflite import convert_onnx_to_tflite, export_tflite_onnx, onnx2tf_sample


@dataclass
class ExportJob:
    """A checked request, ready to write: the model, where, and how."""

    model: nn.Module
    output: Path
    precision: str
    img_size: int
    opset: int
    dynamic_batch: bool
    sample: Tensor  # [N, 3, S, S] model inputs at hand (real images when given): onnx2tf's test sample
    calibration: Tensor | None  # [N, 3, S, S] real images (int8 calibration, fp16 weight choice), else None


@dataclass(frozen=True)
class ExportFormat(FormatSpec):
    """A format's spec (``request.SPECS``: suffix, precisions, packages) and the function that writes it."""

    write: Callable[[ExportJob], dict[str, Any]]  # writes job.output, returns what the sidecar records about it


def _write_onnx(job: ExportJob) -> dict[str, Any]:
    export_onnx(job.model, job.output, img_size=job.img_size, opset=job.opset, dynamic_batch=job.dynamic_batch)
    exporter = "torch.onnx.export (dynamo=True, optimize=True)"
    return {"exporter": exporter, "torch": torch.__version__, "opset": job.opset}


def _write_tflite(job: ExportJob) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mobilevit_onnx_") as tmp:
        onnx_path = export_tflite_onnx(job.model, Path(tmp) / "model.onnx", img_size=job.img_size, opset=job.opset)
        images = job.calibration
        if images is None and job.precision == "fp16":
            images = job.sample  # no folder given: fp16's weights are chosen on the check inputs
        # [N, 3, S, S] -> [N, S, S, 3]: TFLite's input layout
        calibration = None if images is None else images.permute(0, 2, 3, 1).numpy()
        info = convert_onnx_to_tflite(
            onnx_path, {job.precision: job.output}, sample=onnx2tf_sample(job.sample), calibration=calibration
        )
    return {
        "exporter": "torch.onnx.export (dynamo) -> onnx2tf (SavedModel) -> TFLiteConverter (builtin ops only)",
        "layernorm": "L2_NORMALIZATION (mobilevit_torch/export/l2_layernorm.py)",
        "torch": torch.__version__,
        "opset": job.opset,
        **info,
    }


_WRITERS = {"onnx": _write_onnx, "tflite": _write_tflite}
FORMATS: dict[str, ExportFormat] = {
    name: ExportFormat(spec.name, spec.suffix, spec.precisions, spec.modules, _WRITERS[name])
    for name, spec in SPECS.items()
}
