"""Export: ONNX and TFLite (via onnx2tf) with a parity check against PyTorch and an app-ready sidecar.

    from mobilevit_torch.export import export_model
    result = export_model(format="tflite", checkpoint="best.pt", precision="int8", data_root="photos/")
    print(result.summary())

Heavy packages (onnx, onnxruntime, onnx2tf, TensorFlow, LiteRT) are imported only when a format
needs them; a missing one fails with the install command.
"""

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
    "ParityError",
    "ParityReport",
    "export_model",
    "open_runner",
]
