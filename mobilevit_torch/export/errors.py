"""What can go wrong in an export, and the check that the export toolchain is installed.

Three kinds of failure, so a command line can answer each with one line and the right status:
``ExportError`` for a request that cannot be carried out as asked (a bad argument, a missing file or
package: the user's to fix), ``ConversionError`` for a converter that failed on a valid request (or an
output that could not be written: disk full, permission denied; no partial file is left), and
``ParityError`` for an exported file whose outputs do not match PyTorch's.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import sys
from pathlib import Path

# onnx2tf pins exact, older versions of numpy/onnx/onnxruntime/protobuf and tf-keras requires the
# `tensorflow` package (not `tensorflow-cpu`): scripts/install_export_deps.sh installs both without their
# dependencies and what they import at run time with verified versions (`make install` runs it).

# Python modules each format needs at export time (import name -> package that provides it).
ONNX_MODULES = {"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript"}
TFLITE_MODULES = {
    **ONNX_MODULES,
    "onnx2tf": "onnx2tf",
    "tensorflow": "tensorflow-cpu",
    "tf_keras": "tf-keras",
    "ai_edge_litert": "ai-edge-litert",
    "onnxsim": "onnxsim",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
    "sng4onnx": "sng4onnx",
    "psutil": "psutil",
}


class ExportError(ValueError):
    """A request that cannot be exported as asked: a bad argument, a missing file, folder or package."""


class ConversionError(RuntimeError):
    """A converter (the ONNX exporter, onnx2tf, the TFLite converter) failed on a valid request, or its
    output could not be written."""


class ParityError(RuntimeError):
    """The exported file's outputs differ from PyTorch's by more than the precision allows."""


def install_hint(*, tflite: bool) -> str:
    """The commands that install the ONNX toolchain, and with ``tflite`` the TFLite one, into this interpreter's
    environment, run from the repository root (``make install`` runs both for ``.venv``)."""
    python = shlex.quote(sys.executable)
    onnx = f"{python} -m pip install -e '.[onnx]'"
    tflite_part = f"bash scripts/install_export_deps.sh {python}"
    return f"{onnx} && {tflite_part}" if tflite else onnx


def require_modules(modules: dict[str, str], *, purpose: str) -> None:
    """Fail with one line naming the install command when any of ``modules`` is missing.

    Uses ``find_spec``, which locates a module without importing it, so the check costs nothing and
    runs before any work.
    """
    missing = [package for module, package in modules.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return
    install = install_hint(tflite=any(module in modules for module in ("onnx2tf", "tf_keras")))
    raise ExportError(f"{purpose} needs {', '.join(missing)}, not installed (from the repository root): {install}")


def onnxsim_executable() -> str:
    """The ``onnxsim`` command onnx2tf shells out to: the one beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "onnxsim"
    if beside.is_file():
        return str(beside)
    found = shutil.which("onnxsim")
    if found is None:
        install = install_hint(tflite=True)
        raise ExportError(f"format=tflite needs the onnxsim command, not found (from the repository root): {install}")
    return found
