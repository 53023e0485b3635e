"""What an app needs beside the exported file: ``<file>.json`` (how to feed it, how to read it) and
``<file>.labels.txt`` (the class names, one a line).

Both are named after the exported file, so several exports can share a folder: each sidecar's
``labels_file`` names its own labels, never another export's.

The input and output descriptions are read back from the exported file by the runtime that runs it
(names, layout, shape, dtype, quantisation), not restated from the request, so they cannot drift
from what the file actually expects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mobilevit_torch.export.parity import ParityReport
from mobilevit_torch.files import atomic_write
from mobilevit_torch.preprocessing import Preprocessing


def sidecar_path(exported: Path) -> Path:
    """``model.tflite`` -> ``model.tflite.json`` (a ``.onnx`` and a ``.tflite`` of one stem do not collide)."""
    return exported.with_name(exported.name + ".json")


def labels_path(exported: Path) -> Path:
    """``model.tflite`` -> ``model.tflite.labels.txt``: one export's class names, beside its sidecar."""
    return exported.with_name(exported.name + ".labels.txt")


def preprocessing_recipe(pre: Preprocessing) -> dict[str, Any]:
    """The preprocessing as data plus the steps in words, in the order an app applies them."""
    return {
        **pre.to_dict(),
        "steps": [
            "decode the image as 8-bit RGB",
            f"resize the shorter side to {pre.resize_size} px ({pre.interpolation}, antialiased)",
            f"center-crop {pre.input_size} x {pre.input_size}",
            "scale pixel values to [0, 1] (divide by 255)",
            f"normalise per channel: (x - mean) / std with mean={list(pre.mean)}, std={list(pre.std)}",
            "reorder channels to BGR" if pre.channel_order == "BGR" else "keep channels in RGB order",
        ],
    }


def write_sidecar(
    exported: Path,
    *,
    format_name: str,
    precision: str,
    model_name: str,
    source: str,
    io: dict[str, Any],
    preprocessing: Preprocessing,
    class_names: list[str],
    parity: ParityReport,
    converter: dict[str, Any],
) -> tuple[Path, Path]:
    """Write ``<file>.json`` and ``<file>.labels.txt`` beside ``exported``; returns both paths."""
    labels = labels_path(exported)
    payload = {
        "file": exported.name,
        "format": format_name,
        "precision": precision,
        "model": model_name,
        "source": source,
        "num_classes": len(class_names),
        "labels_file": labels.name,
        "class_names": class_names,
        **io,
        "output_meaning": f"logits: one unnormalised score per class, in {labels.name} order (softmax: probabilities)",
        "preprocessing": preprocessing_recipe(preprocessing),
        "parity": parity.to_dict(),
        "converter": converter,
    }
    sidecar = sidecar_path(exported)
    _write_atomic(sidecar, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(labels, "".join(f"{name}\n" for name in class_names))
    return sidecar, labels


def _write_atomic(path: Path, text: str) -> None:
    with atomic_write(path, encoding="utf-8") as file:
        file.write(text)
