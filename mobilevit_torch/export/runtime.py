"""Run an exported file the way an app would: ONNX Runtime for ``.onnx``, the LiteRT interpreter for ``.tflite``.

Every runner takes the PyTorch model's input (``[N, 3, H, W]`` float32, preprocessed) and returns
float32 logits ``[N, classes]``, so parity checks and benchmarks compare like with like. The
TFLite runner does what the app must do: NCHW -> NHWC, and for a full-integer model quantise the
input and dequantise the output with the scale and zero point stored in the file.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mobilevit_torch.export.errors import ONNX_MODULES, ConversionError, ExportError, install_hint, require_modules


class Runner(Protocol):
    path: Path

    def __call__(self, images: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def open_runner(path: str | Path, *, threads: int | None = None) -> Runner:
    """A runner for ``path`` chosen by its suffix; ``threads`` fixes the CPU thread count (None: the runtime's)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxRunner(path, threads=threads)
    if path.suffix.lower() == ".tflite":
        return TFLiteRunner(path, threads=threads)
    raise ExportError(f"cannot run {path}: expected a .onnx or .tflite file")


class OnnxRunner:
    """ONNX Runtime on the CPU. A file with a fixed batch of 1 is run one image at a time."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        require_modules(ONNX_MODULES, purpose="running an ONNX file")
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0]
        self.dynamic_batch = not isinstance(self.input.shape[0], int)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if self.dynamic_batch:
            return self.session.run([self.output.name], {self.input.name: images})[0]
        return np.concatenate(
            [self.session.run([self.output.name], {self.input.name: images[i : i + 1]})[0] for i in range(len(images))]
        )

    def describe(self) -> dict[str, Any]:
        return {
            "input": {"name": self.input.name, "layout": "NCHW", "shape": list(self.input.shape), "dtype": "float32"},
            "output": {"name": self.output.name, "shape": list(self.output.shape), "dtype": "float32"},
        }


class TFLiteRunner:
    """The LiteRT (``ai_edge_litert``) interpreter, one NHWC image per call, XNNPACK on the CPU."""

    def __init__(self, path: Path, *, threads: int | None = None, content: bytes | None = None) -> None:
        """Runs the file at ``path``, or ``content`` when given (a model held in memory; ``path`` names it)."""
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ExportError(
                "running a .tflite file needs ai-edge-litert, not installed (from the repository root): "
                + install_hint(tflite=True)
            ) from None
        self.path = path
        if content is None:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        else:
            self.interpreter = Interpreter(model_content=content, num_threads=threads)
        with _without_delegate_notice():
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        signatures = self.interpreter.get_signature_list()
        signature = signatures.get("serving_default", {})
        self.input_name = (signature.get("inputs") or [self.input["name"]])[0]
        self.output_name = (signature.get("outputs") or [self.output["name"]])[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        # [N, 3, H, W] -> [N, H, W, 3]
        return self.nhwc(np.transpose(images, (0, 2, 3, 1)))

    def nhwc(self, images: np.ndarray) -> np.ndarray:
        """Logits ``[N, classes]`` of ``[N, H, W, 3]`` inputs, one image per call as an app runs them."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        return np.concatenate([self._one(images[i : i + 1]) for i in range(len(images))])

    def _one(self, image: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype != np.float32:
            scale, zero_point = self.input["quantization"]
            info = np.iinfo(dtype)
            image = np.clip(np.round(image / scale + zero_point), info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self.input["index"], image)
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] != np.float32:
            scale, zero_point = self.output["quantization"]
            logits = (logits.astype(np.float32) - zero_point) * scale
        return logits.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "input": {"name": self.input_name, "tensor": self.input["name"], "layout": "NHWC", **_tensor(self.input)},
            "output": {"name": self.output_name, "tensor": self.output["name"], **_tensor(self.output)},
            "signature": "serving_default",
        }


DELEGATE_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@contextlib.contextmanager
def _without_delegate_notice() -> Iterator[None]:
    """LiteRT's C++ prints :data:`DELEGATE_NOTICE` on the process's stderr the first time a process
    allocates an interpreter's tensors, and nothing turns it off: hold stderr (file descriptor 2) in
    a temporary file meanwhile and pass on every other line, a warning or an error, as it was."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to hold (a process started without one)
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().splitlines(keepends=True)
            rest = b"".join(line for line in lines if not line.startswith(DELEGATE_NOTICE))
            while rest:
                rest = rest[os.write(2, rest) :]


def builtin_operators(path: Path) -> dict[str, int]:
    """How often each TFLite op occurs in ``path``; an error if any is not a builtin kernel.

    The file is opened with the builtin op resolver and no delegates: a Flex (SELECT_TF_OPS) or
    custom op cannot be resolved there, exactly as in an app that ships the plain TFLite runtime.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        interpreter = Interpreter(
            model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"{path} needs ops outside the builtin TFLite kernels: {first}") from None
    counts: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    foreign = sorted(name for name in counts if name.startswith("Flex") or name == "CUSTOM")
    if foreign:
        raise ConversionError(f"{path} uses non-builtin TFLite ops {', '.join(foreign)} (the Flex delegate)")
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _tensor(details: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"shape": [int(d) for d in details["shape"]], "dtype": np.dtype(details["dtype"]).name}
    scale, zero_point = details["quantization"]
    if scale:
        out["quantization"] = {
            "scale": float(scale),
            "zero_point": int(zero_point),
            "real_value": "(q - zero_point) * scale",  # so q = round(x / scale) + zero_point
        }
    return out
