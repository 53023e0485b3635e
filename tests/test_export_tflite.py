"""TFLite through onnx2tf, checked with the LiteRT interpreter. Slow (onnx2tf takes about a minute per
model on two CPU cores), so marked ``tflite``: ``pytest -m tflite`` runs only these, ``-m "not tflite"``
skips them. They skip when the toolchain (scripts/install_export_deps.sh) is not installed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilevit_torch.export import export_model, open_runner
from mobilevit_torch.export.images import load_images, pick_images
from mobilevit_torch.export.parity import TOLERANCES
from mobilevit_torch.export.runtime import builtin_operators
from mobilevit_torch.export.tflite_fp16 import candidates, choose_float16, logits_on
from mobilevit_torch.export.to_tflite import convert_onnx_to_tflite, export_tflite_onnx, onnx2tf_sample
from mobilevit_torch.models import MobileViT
from tests.conftest import REPO, input_sensitive
from tests.test_export import CLASSES, TINY, make_checkpoint, make_folder

for module in ("onnx2tf", "tensorflow", "tf_keras", "ai_edge_litert", "onnxsim", "onnx_graphsurgeon", "sng4onnx"):
    pytest.importorskip(module, reason="the TFLite toolchain is not installed (scripts/install_export_deps.sh)")

pytestmark = pytest.mark.tflite

def test_tflite_fp32_xxs_matches_pytorch(tmp_path: Path) -> None:
    """The issue's CI conversion: a full XXS, fp32, LiteRT against PyTorch on real (generated) photos."""
    folder = make_folder(tmp_path / "photos")
    checkpoint = make_checkpoint(tmp_path / "xxs.pt")
    result = export_model(
        format="tflite", checkpoint=checkpoint, data_root=folder, check_images=3, output=tmp_path / "out" / "m.tflite"
    )
    assert result.parity.real_images and result.parity.max_abs_diff <= 1e-4
    assert result.parity.top1_agreement == 1.0

    meta = json.loads(result.sidecar.read_text())
    assert meta["input"]["name"] == "input" and meta["output"]["name"] == "logits"
    assert meta["input"]["layout"] == "NHWC" and meta["input"]["shape"] == [1, 256, 256, 3]
    assert meta["input"]["dtype"] == "float32" and meta["output"]["shape"] == [1, 3]
    assert meta["class_names"] == CLASSES and result.labels.read_text().splitlines() == CLASSES
    ops = meta["converter"]["tflite_ops"]
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(ops)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    # every LayerNorm as one L2_NORMALIZATION (l2_layernorm.py), none as TensorFlow's variance ops
    assert ops["L2_NORMALIZATION"] == 21 and "SQUARED_DIFFERENCE" not in ops and "RSQRT" not in ops
    assert meta["converter"]["onnx2tf"] == "1.29.24"

    # The app's view: NHWC in, logits out, against PyTorch's NCHW on another input.
    from ai_edge_litert.interpreter import Interpreter

    from mobilevit_torch import create_model

    model = create_model("mobilevit_xxs", pretrained=checkpoint).eval()
    x = torch.rand(1, 3, 256, 256)
    interpreter = Interpreter(model_path=str(result.path))
    run = interpreter.get_signature_runner("serving_default")
    got = run(input=x.permute(0, 2, 3, 1).numpy())["logits"]  # [1, 3, H, W] -> [1, H, W, 3]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() <= 1e-4

    # The file in place of the checkpoint, as evaluate.py and predict.py run it: the model's probabilities.
    from mobilevit_torch.evaluation import predict_images
    from mobilevit_torch.export import load_exported

    photos = sorted(folder.rglob("*.*"))
    exported = load_exported(result.path)
    assert exported.class_names == CLASSES and exported.model_name == "mobilevit_xxs (tflite fp32)"
    for ranked, expected in zip(predict_images(exported, photos), predict_images(model, photos), strict=True):
        assert [name for name, _ in ranked] == [name for name, _ in expected]
        assert [p for _, p in ranked] == pytest.approx([p for _, p in expected], abs=1e-4)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every TFLite precision of a tiny MobileViT from one onnx2tf run, with its images and PyTorch logits."""
    tmp_path = tmp_path_factory.mktemp("tiny")
    folder = make_folder(tmp_path / "photos", per_class=8)
    torch.manual_seed(0)  # a module fixture: set up before the per-test seed
    model = input_sensitive(MobileViT(TINY, num_classes=3))
    pre = model.preprocessing.with_input_size(64)
    picked = pick_images(folder, calib_images=12, check_images=6)
    calibration, _ = load_images(picked.calibration, pre)
    check, _ = load_images(picked.check, pre)
    onnx_path = export_tflite_onnx(model, tmp_path / "tiny.onnx", img_size=64)
    outputs = {p: tmp_path / f"tiny_{p}.tflite" for p in ("fp32", "fp16", "int8_dynamic", "int8_mixed", "int8")}
    calibration = calibration.permute(0, 2, 3, 1).numpy()  # [N, 3, S, S] -> [N, S, S, 3]
    stages, package_logger = ListHandler(), logging.getLogger("mobilevit_torch")  # a module fixture: no caplog
    level = package_logger.level
    package_logger.addHandler(stages)
    package_logger.setLevel(logging.INFO)
    try:
        info = convert_onnx_to_tflite(onnx_path, outputs, sample=onnx2tf_sample(check), calibration=calibration)
    finally:
        package_logger.removeHandler(stages)
        package_logger.setLevel(level)
    probe = torch.cat([check, torch.from_numpy(calibration).permute(0, 3, 1, 2)])  # [N, S, S, 3] -> [N, 3, S, S]
    with torch.no_grad():
        reference, probe_reference = model(check).numpy(), model(probe).numpy()
    return {
        "outputs": outputs, "info": info, "check": check, "reference": reference, "calibration": calibration,
        "probe": probe.numpy(), "probe_reference": probe_reference, "stages": stages.messages,
    }  # fmt: skip


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_conversion_tells_its_stages(tiny_export: dict) -> None:
    """Minutes of conversion are not minutes of silence: each stage of the worker is logged as it starts."""
    assert tiny_export["stages"] == [
        "tflite: loading TensorFlow and onnx2tf",
        "tflite: onnx2tf: the ONNX graph to a Keras model (NCHW to NHWC)",
        *[f"tflite: TFLite converter: {p}" for p in ("fp32", "int8_dynamic")],
        *[f"tflite: TFLite converter: {p} (calibrating on the images)" for p in ("int8_mixed", "int8")],
        "tflite: fp16: choosing the float16 weights on 12 images",
    ]


# The largest change from the model's logits across images each precision may make, as a share of the model's own
# (measured: fp32 4e-6, fp16 1e-3, int8_dynamic 0.05, int8_mixed and int8 0.29).
SHARE_OF_CHANGE = {"fp32": 1e-4, "fp16": 0.01, "int8_dynamic": 0.15, "int8_mixed": 0.5, "int8": 0.5}


def test_tflite_quantized_tiny(tiny_export: dict) -> None:
    """fp16, dynamic-range int8, mixed and full-integer int8 of a tiny MobileViT from one onnx2tf run."""
    outputs, info, check, reference = (tiny_export[k] for k in ("outputs", "info", "check", "reference"))
    probe, probe_reference = tiny_export["probe"], tiny_export["probe_reference"]
    assert len(set(probe_reference.argmax(1))) > 1  # the model tells the photos apart
    assert set(info["tflite_seconds"]) == set(outputs)
    sizes = {p: f.stat().st_size for p, f in outputs.items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"] and sizes["int8_dynamic"] < sizes["fp16"]
    for precision, file in outputs.items():
        ops = builtin_operators(file)  # raises on a Flex or custom op
        assert ops["L2_NORMALIZATION"] == 6 and "SQUARED_DIFFERENCE" not in ops, precision  # the 6 LayerNorms
        runner = open_runner(file)
        logits = runner(check.numpy())
        assert logits.shape == reference.shape and np.isfinite(logits).all()
        # How each file follows the model from image to image, on all 15 photos: the logits' changes across the
        # images (their mean over the images taken out) within a share of the model's, and the same top-1.
        got = runner(probe)
        change, expected_change = got - got.mean(0), probe_reference - probe_reference.mean(0)
        share = np.abs(change - expected_change).max() / np.abs(expected_change).max()
        assert share <= SHARE_OF_CHANGE[precision], (precision, share)
        assert (got.argmax(1) == probe_reference.argmax(1)).mean() >= 0.8, precision
        if precision in TOLERANCES:  # fp32, fp16: the logits themselves too
            assert np.abs(got - probe_reference).max() <= TOLERANCES[precision], precision
    full = open_runner(outputs["int8"]).describe()
    assert full["input"]["dtype"] == "int8" and full["output"]["dtype"] == "int8"
    assert set(full["input"]["quantization"]) == {"scale", "zero_point", "real_value"}
    # int8_mixed: float32 in and out, integer convolutions and linear layers, float islands between them
    assert open_runner(outputs["int8_mixed"]).describe()["input"]["dtype"] == "float32"
    mixed = builtin_operators(outputs["int8_mixed"])
    assert {"QUANTIZE", "DEQUANTIZE", "SOFTMAX", "BATCH_MATMUL", "CONV_2D"} <= set(mixed)
    assert l2_norm_dtypes(outputs["int8_mixed"]) == {"float32"} and l2_norm_dtypes(outputs["int8"]) == {"int8"}
    assert open_runner(outputs["int8_dynamic"]).describe()["input"]["dtype"] == "float32"
    report = info["fp16_weights"]
    assert report["probe_images"] == len(tiny_export["calibration"])
    assert report["probe_max_abs_diff_vs_fp32"] <= report["budget"] == 2.5e-3


def test_running_a_file_prints_no_delegate_notice(tiny_export: dict) -> None:
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." once a process: not via our runner."""
    script = "import sys, numpy as np; from mobilevit_torch.export import open_runner; " + (
        "print(open_runner(sys.argv[1])(np.zeros((1, 3, 64, 64), np.float32)).shape)"
    )
    path = str(tiny_export["outputs"]["fp32"])
    done = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 3)" and "XNNPACK" not in done.stderr, done.stderr


def l2_norm_dtypes(path: Path) -> set[str]:
    """The input dtypes of the L2_NORMALIZATION ops (the LayerNorms) in a TFLite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    return {dtypes[op["inputs"][0]] for op in interpreter._get_ops_details() if op["op_name"] == "L2_NORMALIZATION"}


def test_fp16_weight_choice(tiny_export: dict) -> None:
    """The fp16 file halves what the budget allows: everything, nothing, or the cheapest part."""
    from ai_edge_litert.tools import flatbuffer_utils

    fp32 = tiny_export["outputs"]["fp32"].read_bytes()
    probe = tiny_export["calibration"]
    found = candidates(flatbuffer_utils.read_model_from_bytearray(bytearray(fp32)))
    assert len(found) >= 10

    def describe(content: bytes) -> tuple[int, int]:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        graph = model.subgraphs[0]
        names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators]
        return names.count("DEQUANTIZE"), sum(t.type == 1 for t in graph.tensors)  # TensorType FLOAT16

    everything, report = choose_float16(fp32, probe, budget=float("inf"))
    assert report["float16_tensors"] == len(found) and report["float32_tensors_kept"] == 0
    assert describe(everything) == (len(found), len(found))
    assert len(everything) < 0.6 * len(fp32)

    nothing, report = choose_float16(fp32, probe, budget=0.0)
    assert nothing == fp32 and report["float16_tensors"] == 0 and report["float32_tensors_kept"] == len(found)

    run = logits_on(probe)
    all_half = float(np.abs(run(everything) - run(fp32)).max())
    budget = all_half / 3
    part, report = choose_float16(fp32, probe, budget=budget)
    assert 0 < report["float16_tensors"] < len(found)
    assert describe(part)[0] == report["float16_tensors"]
    assert len(everything) < len(part) < len(fp32)
    assert float(np.abs(run(part) - run(fp32)).max()) == pytest.approx(report["probe_max_abs_diff_vs_fp32"])
    assert report["probe_max_abs_diff_vs_fp32"] <= budget
