"""Float16 weights that keep the fp16 parity bound: which constants of a float32 TFLite file to halve.

TensorFlow's converter (``supported_types=[tf.float16]``) stores every float constant as float16 and
tags the file ``reduced_precision_support: fp16accfp32``, which allows a delegate to compute in
float16 too. On a trained MobileViT the weight rounding alone moves the logits by more than the 1e-2
the fp16 export is held to (1.7e-2 on the flowers XXS of the README), and an app's delegate may add
float16 arithmetic on top. So the fp16 file is built here instead, from the float32 one:

* each constant float tensor of at least ``MIN_ELEMENTS`` values (the convolution and linear weights:
  99 % of the bytes) is a candidate; smaller ones (biases, norm scales, epsilons) stay float32;
* a candidate is stored as a FLOAT16 buffer read through a DEQUANTIZE op, exactly as the converter
  stores them, so the interpreter widens it to float32 once, when the model is loaded; the arithmetic
  is float32 throughout and no reduced-precision tag is written;
* if halving every candidate keeps the logits within ``budget`` of the float32 file on the probe
  images, that is the file. Otherwise each candidate is halved alone to measure what it costs, the
  candidates are ordered by bytes saved per unit of logit change, and the longest prefix of that
  order that stays within ``budget`` (a binary search, each step measured on the probe images) is
  halved; the rest stay float32.

Needs only LiteRT (``ai-edge-litert``: its flatbuffer tools and interpreter), not TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MIN_ELEMENTS = 256
PROBE_IMAGES = 64  # images the choice is measured on (the parity check later runs on others)
DEQUANTIZE = 6  # tflite BuiltinOperator.DEQUANTIZE; version 3 reads float16
FLOAT32, FLOAT16 = 0, 1  # tflite TensorType


def candidates(model: Any) -> list[int]:
    """Indices of the constant float32 tensors of at least ``MIN_ELEMENTS`` values in the main graph."""
    graph = model.subgraphs[0]
    found = []
    for index, tensor in enumerate(graph.tensors):
        data = model.buffers[tensor.buffer].data if tensor.buffer > 0 else None
        if tensor.type == FLOAT32 and data is not None and len(data) >= 4 * MIN_ELEMENTS:
            found.append(index)
    return found


def with_float16(fp32: bytes, tensors: Sequence[int]) -> bytes:
    """``fp32`` (a TFLite flatbuffer) with ``tensors`` stored as float16 and widened by DEQUANTIZE at load."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    if not tensors:
        return fp32
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(fp32))
    graph = model.subgraphs[0]
    dequantize = _opcode(model, schema)
    widen = []
    for index in tensors:
        tensor = graph.tensors[index]
        values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype="<f4")
        half = schema.TensorT()
        half.name = (tensor.name or b"") + b"_fp16"
        half.shape = tensor.shape
        half.type = FLOAT16
        half.buffer = _add_buffer(model, schema, values.astype("<f2").tobytes())
        graph.tensors.append(half)
        tensor.buffer = _add_buffer(model, schema, None)  # no data: now the DEQUANTIZE op's output
        op = schema.OperatorT()
        op.opcodeIndex = dequantize
        op.inputs = [len(graph.tensors) - 1]
        op.outputs = [index]
        widen.append(op)
    graph.operators = widen + list(graph.operators)
    _drop_unused_buffers(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def choose_float16(
    fp32: bytes, probe: np.ndarray, *, budget: float, threads: int = 2
) -> tuple[bytes, dict[str, Any]]:
    """The fp16 file: as many candidate weights halved as keep ``max |logit change| <= budget`` on ``probe``.

    ``probe`` holds ``[N, H, W, 3]`` float32 model inputs (real images when the user gave a folder).
    Returns the file and a report for the sidecar.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    probe = probe[:PROBE_IMAGES]
    run = logits_on(probe, threads)
    reference = run(fp32)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(fp32))
    found = candidates(model)
    sizes = {i: len(model.buffers[model.subgraphs[0].tensors[i].buffer].data) for i in found}

    def change(tensors: Sequence[int]) -> tuple[bytes, np.ndarray]:
        content = with_float16(fp32, tensors)
        return content, np.abs(run(content) - reference)

    content, diff = change(found)
    worst = float(diff.max())
    chosen: Sequence[int] = found
    if worst > budget:
        # what halving each one alone costs: the mean squared logit change (steadier than the maximum)
        cost = {i: float(np.square(change([i])[1]).mean()) for i in found}
        order = sorted(found, key=lambda i: cost[i] / sizes[i])
        low, high = 0, len(order) - 1  # the prefix of length `low` fits; of length `high + 1` does not
        content, worst = fp32, 0.0
        while low <= high:
            middle = (low + high) // 2
            attempt, attempt_diff = change(order[: middle + 1])
            attempt_worst = float(attempt_diff.max())
            if attempt_worst <= budget:
                content, worst, low = attempt, attempt_worst, middle + 1
            else:
                high = middle - 1
        chosen = order[:low]
    kept = [i for i in found if i not in set(chosen)]
    report = {
        "float16_tensors": len(chosen),
        "float32_tensors_kept": len(kept),
        "float32_bytes_kept": sum(sizes[i] for i in kept),
        "probe_images": int(probe.shape[0]),
        "probe_max_abs_diff_vs_fp32": worst,
        "budget": budget,
    }
    return content, report


def logits_on(probe: np.ndarray, threads: int = 2) -> Callable[[bytes], np.ndarray]:
    """A function from TFLite file contents to its ``[N, classes]`` logits on ``probe`` (``[N, H, W, 3]``)."""
    from mobilevit_torch.export.runtime import TFLiteRunner

    def run(content: bytes) -> np.ndarray:
        return TFLiteRunner(Path("<fp16 candidate>"), threads=threads, content=content).nhwc(probe)

    return run


def _opcode(model: Any, schema: Any) -> int:
    for index, code in enumerate(model.operatorCodes):
        if code.builtinCode == DEQUANTIZE:
            code.version = max(code.version, 3)
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = DEQUANTIZE
    code.deprecatedBuiltinCode = DEQUANTIZE
    code.version = 3
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _add_buffer(model: Any, schema: Any, data: bytes | None) -> int:
    buffer = schema.BufferT()
    buffer.data = None if data is None else np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def _drop_unused_buffers(model: Any) -> None:
    """Empty the float32 buffers no tensor reads any more (they would still be written to the file)."""
    used = {tensor.buffer for graph in model.subgraphs for tensor in graph.tensors}
    used.update(meta.buffer for meta in model.metadata or [])
    for index, buffer in enumerate(model.buffers):
        if index not in used:
            buffer.data = None
