#!/usr/bin/env bash
# The TFLite export toolchain (onnx2tf, TensorFlow, LiteRT), installed beside the project's torch,
# onnx and onnxruntime without changing the version of anything already installed.
#
#   scripts/install_export_deps.sh [PYTHON]      # default: .venv/bin/python; safe to run again
#
# Why not plain `pip install onnx2tf==1.29.24`: its metadata pins numpy 1.26.4, onnx 1.19.1,
# onnxruntime 1.23.0, protobuf 4.25.5, tensorflow 2.19 and tf-keras 2.19, so pip would downgrade the
# project's numpy 2.4 / onnx 1.23 / onnxruntime 1.32 / protobuf 7 and pull in the 600 MB `tensorflow`.
# onnx2tf's code runs with the newer versions (tests/test_export_tflite.py converts and checks with
# them), so onnx2tf and tf-keras (which names `tensorflow`, not `tensorflow-cpu`, as its requirement)
# go in with --no-deps, and the packages onnx2tf imports at run time go in with normal dependency
# resolution: tensorflow-cpu 2.21, ai-edge-litert (the LiteRT interpreter), onnxsim (onnx2tf runs its
# command), onnx-graphsurgeon (0.6.1: 0.5.x calls a function onnx 1.23 removed), sng4onnx, psutil.
# `pip check` will list onnx2tf's unmet exact pins; that is expected.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# Installed packages keep their versions (pip fails rather than up- or downgrading one); the new ones
# get the versions verified together on Python 3.11.
"$PYTHON" - "$constraints" <<'PY'
import re
import subprocess
import sys

verified = """
tensorflow-cpu==2.21.0
ai-edge-litert==2.3.0
onnxsim==0.4.36
onnx-graphsurgeon==0.6.1
sng4onnx==2.0.1
psutil==7.2.2
keras==3.15.1
h5py==3.14.0
ml-dtypes==0.6.0
protobuf==7.36.2
absl-py==2.5.1
astunparse==1.6.3
backports.strenum==1.2.8
flatbuffers==25.12.19
gast==0.7.0
google-pasta==0.2.0
grpcio==1.85.1
libclang==18.1.1
namex==0.1.0
opt-einsum==3.4.0
optree==0.20.0
requests==2.34.2
certifi==2026.10.18
charset-normalizer==3.5.2
urllib3==2.8.0
six==1.17.0
termcolor==3.3.0
wheel==0.48.0
wrapt==2.5.2
rich==15.0.0
"""


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


frozen = subprocess.run(
    [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
).stdout.splitlines()
installed = {key(line.split("==")[0]): line for line in frozen if "==" in line and " @ " not in line}
pins = [line for line in verified.split() if key(line.split("==")[0]) not in installed]
with open(sys.argv[1], "w") as file:
    file.write("\n".join([*installed.values(), *pins]) + "\n")
PY

"$PYTHON" -m pip install -q -c constraints.txt -c "$constraints" \
    tensorflow-cpu ai-edge-litert onnxsim onnx-graphsurgeon sng4onnx psutil
"$PYTHON" -m pip install -q --no-deps onnx2tf==1.29.24 tf-keras==2.21.0

"$PYTHON" - <<'PY'
import ai_edge_litert.interpreter
import onnx
import onnx2tf
import onnx_graphsurgeon
import onnxruntime
import onnxsim
import psutil
import sng4onnx
import tensorflow
import tf_keras
import torch

print(
    f"export toolchain ready: onnx2tf {onnx2tf.__version__}, tensorflow {tensorflow.__version__}, "
    f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}"
)
PY
