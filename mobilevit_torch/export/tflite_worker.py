"""ONNX -> TFLite, run in a process of its own by :mod:`mobilevit_torch.export.to_tflite`.

    python tflite_worker.py request.json

onnx2tf turns the ONNX graph into a Keras model (NCHW -> NHWC throughout, the input becomes
``[1, H, W, 3]``; its layers keep the ONNX input and output names, ``input`` and ``logits``, which
become the TFLite signature's). TensorFlow's TFLite converter then writes each requested precision
from that one model (fp16 is made from the fp32 file afterwards: see ``tflite_fp16.py``), builtin
TFLite ops only, so a graph that would need the Flex delegate (SELECT_TF_OPS) fails here instead of producing
a file an app cannot run. onnx2tf's own SavedModel and TFLite outputs are skipped
(``disable_model_save``): they allow Flex ops and cost time.

This file is run by path, not imported as part of the package: it imports neither torch nor
mobilevit_torch (TensorFlow and PyTorch in one process fight over threads and protobuf), only the
standard library, numpy, TensorFlow, onnx2tf and LiteRT. The parent puts a ``sitecustomize`` on
``PYTHONPATH`` that refuses network connections in this process and in the ``onnxsim`` processes onnx2tf starts.
"""

from __future__ import annotations

import functools
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def main(request_file: str) -> int:
    request = json.loads(Path(request_file).read_text())
    if not getattr(socket.socket.connect, "offline_guard", False):
        print("refusing to convert: the offline guard (sitecustomize) is not active", file=sys.stderr)
        return 3

    say = functools.partial(_stage, Path(request["progress"]))
    say("loading TensorFlow and onnx2tf")
    import onnx2tf
    import tensorflow as tf

    say("onnx2tf: the ONNX graph to a Keras model (NCHW to NHWC)")
    started = time.perf_counter()
    # output_signaturedefs: layer names without onnx2tf's leading "/", as a signature wants them.
    model = onnx2tf.convert(
        input_onnx_file_path=request["onnx"],
        output_folder_path=str(Path(request["workdir"]) / "onnx2tf"),
        output_signaturedefs=True,
        disable_model_save=True,
        verbosity="info",
    )
    onnx2tf_seconds = time.perf_counter() - started
    if len(model.inputs) != 1:
        print(f"expected one model input, onnx2tf made {len(model.inputs)}", file=sys.stderr)
        return 4

    seconds = {}
    for precision, target in request["outputs"].items():
        calibrated = precision in ("int8", "int8_mixed")
        say(f"TFLite converter: {precision}" + (" (calibrating on the images)" if calibrated else ""))
        started = time.perf_counter()
        Path(target).write_bytes(_convert(tf, model, precision, request.get("calibration")))
        seconds[precision] = round(time.perf_counter() - started, 2)

    result: dict[str, Any] = {
        "onnx2tf": onnx2tf.__version__,
        "tensorflow": tf.__version__,
        "onnx2tf_seconds": round(onnx2tf_seconds, 2),
        "tflite_seconds": seconds,
    }
    Path(request["result"]).write_text(json.dumps(result))
    return 0


def _stage(progress: Path, text: str) -> None:
    """One line per stage, read by the parent (which shows it): the conversion is minutes of silence otherwise."""
    with open(progress, "a", encoding="utf-8") as file:
        file.write(text + "\n")


def _convert(tf: Any, model: Any, precision: str, calibration: str | None) -> bytes:
    """TensorFlow's converter, builtin ops only: no SELECT_TF_OPS, so no Flex delegate is ever needed.
    (``fp16`` is not asked for here: the parent makes it from the ``fp32`` file.)"""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "fp32":
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "int8_dynamic":
        # Dynamic-range: int8 weights, float32 activations quantised on the fly per op. No calibration.
        pass
    elif precision in ("int8", "int8_mixed"):
        # Full integer: int8 weights and activations (ranges from real calibration images), int8 input/output.
        # int8_mixed: the same, but LayerNorm (L2_NORMALIZATION) and attention (q k^T, softmax, attn v) stay
        # float32, and the model takes and returns float32 (TensorFlow's selective quantisation keeps float ends).
        if calibration is None:
            raise ValueError(f"precision {precision} needs calibration images")
        import numpy as np

        images = np.load(calibration)  # [N, H, W, 3] float32, already preprocessed like the model input

        def representative_dataset() -> Iterator[list[Any]]:
            for index in range(images.shape[0]):
                yield [images[index : index + 1]]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        if precision == "int8_mixed":
            return _keep_float(tf, converter, images[:1])
    else:
        raise ValueError(f"unknown precision {precision!r}")
    return converter.convert()


# Ops that stay float32 in int8_mixed: the attention (integer BATCH_MATMUL and SOFTMAX are also slow
# on CPU: 31.7 ms full int8 vs 8.7 ms mixed for XXS at 2 threads) and LayerNorm. LayerNorm reaches this
# worker as L2_NORMALIZATION (the parent writes it so: ``l2_layernorm.py``), whose int8 kernel is accurate:
# on the flowers XXS keeping it float32 changes no prediction, but it costs nothing and keeps LayerNorm
# float as this precision promises. (TensorFlow's own LayerNorm ops, MEAN / SQUARED_DIFFERENCE / RSQRT,
# were what cost full int8 its agreement: 95.8 % vs 97.3 % with L2_NORMALIZATION.)
FLOAT_OPS = ["BATCH_MATMUL", "SOFTMAX", "L2_NORMALIZATION"]


def _keep_float(tf: Any, converter: Any, one_image: Any) -> bytes:
    """The calibrated converter's model with the ``FLOAT_OPS`` left in float32."""
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=FLOAT_OPS)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: iter([[one_image]]), debug_options=options
    )
    return debugger.get_nondebug_quantized_model()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
