"""Export: ONNX and TFLite (via onnx2tf) with a parity check against PyTorch and an app-ready sidecar.

    from mobilevit_torch.export import export_model
    result = export_model(format="tflite", checkpoint="best.pt", precision="int8", data_root="photos/")
    print(result.summary())

Heavy packages (onnx, onnxruntime, onnx2tf, TensorFlow, LiteRT) are imported only when a format
needs them; a missing one fails with the install command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mobilevit_torch.lazy import lazy_exports

# Imported on first use (PEP 562), as the top-level package does: export.py checks its arguments with
# the torch-free ``request`` module before anything here loads torch.
_EXPORTS = {
    "ExportedClassifier": "mobilevit_torch.export.classifier",
    "load_exported": "mobilevit_torch.export.classifier",
    "ConversionError": "mobilevit_torch.export.errors",
    "ExportError": "mobilevit_torch.export.errors",
    "ParityError": "mobilevit_torch.export.errors",
    "ExportResult": "mobilevit_torch.export.exporter",
    "export_model": "mobilevit_torch.export.exporter",
    "FORMATS": "mobilevit_torch.export.formats",
    "ExportFormat": "mobilevit_torch.export.formats",
    "AGREEMENT_AIMS": "mobilevit_torch.export.parity",
    "TOLERANCES": "mobilevit_torch.export.parity",
    "ParityReport": "mobilevit_torch.export.parity",
    "open_runner": "mobilevit_torch.export.runtime",
}

if TYPE_CHECKING:
    from mobilevit_torch.export.classifier import ExportedClassifier, load_exported
    from mobilevit_torch.export.errors import ConversionError, ExportError, ParityError
    from mobilevit_torch.export.exporter import ExportResult, export_model
    from mobilevit_torch.export.formats import FORMATS, ExportFormat
    from mobilevit_torch.export.parity import AGREEMENT_AIMS, TOLERANCES, ParityReport
    from mobilevit_torch.export.runtime import open_runner

__all__ = [
    "AGREEMENT_AIMS",
    "FORMATS",
    "TOLERANCES",
    "ConversionError",
    "ExportError",
    "ExportFormat",
    "ExportResult",
    "ExportedClassifier",
    "ParityError",
    "ParityReport",
    "export_model",
    "load_exported",
    "open_runner",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
