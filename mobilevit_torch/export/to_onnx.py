"""PyTorch -> ONNX with ``torch.onnx.export``'s ``torch.export``-based exporter.

The exporter (``dynamo=True``) traces the model with ``torch.export``, translates it with onnxscript
and optimises the graph (constant folding, BatchNorm folded into the convolutions, dead nodes and
redundant casts removed). It implements ONNX opsets 18 to 23; asked for less it silently keeps 18,
so lower opsets are refused rather than mislabelled. The TorchScript exporter is deprecated and not used.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mobilevit_torch.export.errors import ConversionError
from mobilevit_torch.export.request import DEFAULT_OPSET

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    img_size: int,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
) -> Path:
    """Write ``model`` (in eval mode) as an ONNX file taking ``[B, 3, img_size, img_size]`` NCHW input.

    ``B`` is 1, or symbolic (``"batch"``) with ``dynamic_batch``. The input is named ``input`` and the
    output (logits, no softmax) ``logits``. Weights are stored inside the file (no external data).
    """
    import onnx

    model = model.eval()
    example = torch.rand(1, 3, img_size, img_size)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        onnx.checker.check_model(str(path), full_check=True)
    except OSError:
        raise  # the file could not be written (disk full, ...): the caller names it
    except Exception as error:
        raise ConversionError(f"ONNX export failed: {_first_line(error)}") from error
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
