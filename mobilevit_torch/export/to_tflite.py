"""The converter: ONNX -> TFLite through onnx2tf, offline, builtin ops only.

The ONNX file it starts from is written by :func:`export_tflite_onnx`: the model with every LayerNorm
written as an L2 normalisation (``l2_layernorm.py``; exact in float, and TFLite's int8
L2_NORMALIZATION kernel keeps full-integer int8 accurate where TensorFlow's own LayerNorm ops lose it).

The conversion runs in a child process (``tflite_worker.py``) in a private working folder:

* **No network, ever.** onnx2tf downloads a sample-image file for image models whenever it is not
  in its working folder, even without int8. We write that file (``SAMPLE_FILE``) there from the
  user's images (random pixels only when there are none), and a ``sitecustomize`` on the child's
  ``PYTHONPATH`` refuses every internet connection and name lookup, in the worker and in the
  ``onnxsim`` processes onnx2tf starts, so a new download attempt fails loudly instead of leaking.
* **Full-integer int8 is calibrated on real images only**: the caller passes them; there is no
  random fallback.
* **fp16 keeps the parity bound**: it is made here from the worker's float32 file, its float16
  weights chosen on the caller's images (``tflite_fp16.py``) to stay within a quarter of
  ``TOLERANCES["fp16"]``, which leaves the parity check, on other images, room for what the choice
  did not see.
* onnx2tf and TensorFlow log a great deal: it all goes to a log file, kept beside the output (and
  named in the error) when the conversion fails.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mobilevit_torch.export.errors import (
    TFLITE_MODULES,
    ConversionError,
    ExportError,
    onnxsim_executable,
    require_modules,
)
from mobilevit_torch.export.l2_layernorm import with_l2_layernorms
from mobilevit_torch.export.parity import TOLERANCES
from mobilevit_torch.export.request import CALIBRATED, DEFAULT_OPSET
from mobilevit_torch.export.request import TFLITE_PRECISIONS as PRECISIONS
from mobilevit_torch.export.tflite_fp16 import choose_float16
from mobilevit_torch.export.to_onnx import export_onnx

logger = logging.getLogger("mobilevit_torch")

# onnx2tf looks for exactly this file in its working folder and downloads it when absent.
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
WORKER = Path(__file__).with_name("tflite_worker.py")
PROGRESS_FILE = "progress.txt"  # the worker's stages, one a line

OFFLINE_GUARD = '''"""Installed by mobilevit-torch for the TFLite conversion: no network access from this process."""
import socket


def _refuse(*args, **kwargs):
    raise OSError("network access is disabled during mobilevit-torch's TFLite conversion")


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _local_only(connect):
    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse()
        return connect(self, address)

    guarded.offline_guard = True
    return guarded


socket.socket.connect = _local_only(_connect)
socket.socket.connect_ex = _local_only(_connect_ex)
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


def export_tflite_onnx(model: nn.Module, path: Path, *, img_size: int, opset: int = DEFAULT_OPSET) -> Path:
    """Write the static-shape ONNX file that every TFLite precision is converted from.

    A copy of ``model`` with each ``nn.LayerNorm`` replaced by its exact L2-normalisation form
    (:class:`~mobilevit_torch.export.l2_layernorm.L2LayerNorm`), which TensorFlow's converter turns
    into the builtin L2_NORMALIZATION op; ``model`` itself is left as it is.
    """
    return export_onnx(with_l2_layernorms(model), path, img_size=img_size, opset=opset)


def onnx2tf_sample(images: Tensor) -> np.ndarray:
    """The 20 x 128 x 128 x 3 float32 sample onnx2tf wants: ``images`` ([N, 3, H, W] model inputs) resized, NHWC."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty [N, 3, H, W] batch, got shape {tuple(images.shape)}")
    repeats = -(-20 // images.shape[0])
    batch = images.repeat(repeats, 1, 1, 1)[:20].float()
    # [20, 3, H, W] -> [20, 3, 128, 128] -> [20, 128, 128, 3]
    small = F.interpolate(batch, size=(128, 128), mode="bilinear", antialias=True, align_corners=False)
    return small.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def convert_onnx_to_tflite(
    onnx_path: Path,
    outputs: dict[str, Path],
    *,
    sample: np.ndarray,
    calibration: np.ndarray | None = None,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Convert ``onnx_path`` into one TFLite file per precision in ``outputs`` (precision -> path).

    Args:
        onnx_path: a static-shape ONNX file with one NCHW image input.
        outputs: e.g. ``{"fp32": Path("m_fp32.tflite"), "int8": Path("m_int8.tflite")}``; one onnx2tf
            run serves them all.
        sample: ``onnx2tf_sample(...)`` of the images at hand, written where onnx2tf looks for it.
        calibration: ``[N, H, W, 3]`` float32 model inputs (NHWC); required for ``int8``/``int8_mixed`` (real images
            only: the caller makes sure) and ``fp16`` (the images its float16 weights are chosen on).
        timeout_s: the conversion is stopped after this long.

    Returns the converter's versions and timings.
    """
    unknown = sorted(set(outputs) - set(PRECISIONS))
    if unknown:
        raise ExportError(f"unknown TFLite precision(s) {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    calibrated = sorted(set(CALIBRATED) & set(outputs))
    if calibrated and (calibration is None or calibration.shape[0] == 0):
        raise ExportError(
            f"precision={calibrated[0]} needs real calibration images (data.root=PATH); random data is never used"
        )
    if "fp16" in outputs and (calibration is None or calibration.shape[0] == 0):
        raise ValueError("precision fp16 needs images to choose its float16 weights on")
    if sample.shape != (20, 128, 128, 3) or sample.dtype != np.float32:
        raise ValueError(f"sample must be float32 [20, 128, 128, 3], got {sample.dtype} {list(sample.shape)}")
    require_modules(TFLITE_MODULES, purpose="format=tflite")
    onnxsim = onnxsim_executable()

    workdir = Path(tempfile.mkdtemp(prefix="mobilevit_tflite_"))
    log_file = workdir / "convert.log"
    try:
        np.save(workdir / SAMPLE_FILE, sample)
        (workdir / "offline").mkdir()
        (workdir / "offline" / "sitecustomize.py").write_text(OFFLINE_GUARD)
        request: dict[str, Any] = {
            "onnx": str(Path(onnx_path).resolve()),
            "workdir": str(workdir),
            "outputs": {precision: str(Path(path).resolve()) for precision, path in outputs.items()},
            "calibration": None,
            "result": str(workdir / "result.json"),
            "progress": str(workdir / PROGRESS_FILE),
        }
        if "fp16" in outputs:  # made here from the fp32 file, after the worker
            del request["outputs"]["fp16"]
            request["outputs"].setdefault("fp32", str(workdir / "fp32.tflite"))
        if calibration is not None and calibrated:
            np.save(workdir / "calibration.npy", calibration.astype(np.float32))
            request["calibration"] = str(workdir / "calibration.npy")
        (workdir / "request.json").write_text(json.dumps(request))
        for path in outputs.values():
            Path(path).parent.mkdir(parents=True, exist_ok=True)

        started = time.perf_counter()
        with open(log_file, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, str(WORKER), str(workdir / "request.json")],
                cwd=workdir,
                env=_worker_env(workdir / "offline", onnxsim),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                returncode = _follow(worker, workdir / PROGRESS_FILE, timeout_s)
            except subprocess.TimeoutExpired:
                raise ConversionError(
                    f"TFLite conversion stopped after {timeout_s:.0f} s; log: {_keep_log(log_file, outputs)}"
                ) from None
            finally:
                if worker.poll() is None:  # timed out, or Ctrl-C here: the worker goes too
                    worker.kill()
                    worker.wait()
        if returncode != 0 or not (workdir / "result.json").is_file():
            kept = _keep_log(log_file, outputs)
            raise ConversionError(
                f"TFLite conversion failed (exit status {returncode}): {_last_error(log_file)}; log: {kept}"
            )
        result = json.loads((workdir / "result.json").read_text())
        if "fp16" in outputs:
            assert calibration is not None  # checked above
            fp16_started = time.perf_counter()
            logger.info("tflite: fp16: choosing the float16 weights on %d images", calibration.shape[0])
            fp32 = Path(request["outputs"]["fp32"]).read_bytes()
            content, result["fp16_weights"] = choose_float16(fp32, calibration, budget=TOLERANCES["fp16"] / 4)
            Path(outputs["fp16"]).write_bytes(content)
            result["tflite_seconds"]["fp16"] = round(time.perf_counter() - fp16_started, 2)
        result["seconds"] = round(time.perf_counter() - started, 2)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _follow(worker: subprocess.Popen, progress: Path, timeout_s: float) -> int:
    """Wait for the worker, logging each stage it reports as it starts (``tflite: ...``) and, on a
    terminal, a line that counts the seconds; its exit status. Raises ``TimeoutExpired`` after ``timeout_s``."""
    started = time.perf_counter()
    told = 0
    with tqdm(desc="tflite", bar_format="{desc} {elapsed}", leave=False, disable=None) as bar:
        while True:
            try:
                returncode = worker.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                returncode = None
            text = progress.read_text(encoding="utf-8") if progress.is_file() else ""
            lines = text[: text.rfind("\n") + 1].splitlines()  # whole lines only: one may be half-written
            for line in lines[told:]:
                bar.clear()  # the log line goes where the bar was; the bar is drawn again below it
                logger.info("tflite: %s", line)
                bar.set_description_str(f"tflite: {line}", refresh=False)
            told = len(lines)
            bar.refresh()
            if returncode is not None:
                return returncode
            if time.perf_counter() - started > timeout_s:
                raise subprocess.TimeoutExpired(worker.args, timeout_s)


def _worker_env(guard_dir: Path, onnxsim: str) -> dict[str, str]:
    env = dict(os.environ)
    # onnx2tf runs `onnxsim` by name: put this interpreter's scripts folder first.
    env["PATH"] = os.pathsep.join([str(Path(onnxsim).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(guard_dir), env.get("PYTHONPATH", "")) if p)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""  # conversion is CPU work; keep TensorFlow off any GPU
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _keep_log(log_file: Path, outputs: dict[str, Path]) -> str:
    """Copy the conversion log beside the first output, where it outlives the temporary folder; where it is."""
    target = Path(next(iter(outputs.values())))
    kept = target.with_name(target.name + ".convert.log")
    try:
        shutil.copyfile(log_file, kept)
    except OSError as error:  # the temporary folder goes too: say why there is no log to read
        kept.unlink(missing_ok=True)
        return f"not kept (copying it to {kept.parent} failed: {error.strerror or error})"
    return str(kept)


def _last_error(log_file: Path) -> str:
    """The most telling line of a failed conversion's log: the last one that names an error."""
    try:
        lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if "Error" in line or "error" in line or "ERROR" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"
