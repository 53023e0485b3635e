"""Read weights from a file, a directory or the Hugging Face hub, and load them strictly.

Nothing here unpickles arbitrary objects: ``.safetensors`` are read with safetensors, everything
else with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mobilevit_torch.hub_ids import WEIGHT_SUFFIXES, is_hub_id
from mobilevit_torch.preprocessing import APPLE_IMAGENET, TIMM_IMAGENET, Preprocessing
from mobilevit_torch.weights.input_conv import STEM_WEIGHT, adapt_input_conv
from mobilevit_torch.weights.layouts import (
    Layout,
    UnknownLayoutError,
    WeightsError,
    convert_state_dict,
    detect_layout,
    strip_wrapper_prefixes,
)

logger = logging.getLogger("mobilevit_torch")

CHECKPOINT_FORMAT = "mobilevit-torch"

# The published ImageNet-1k weights (all of them Apple's ml-cvnets training, re-hosted).
PUBLISHED: dict[str, dict[str, str]] = {
    "mobilevit_xxs": {"timm": "timm/mobilevit_xxs.cvnets_in1k", "transformers": "apple/mobilevit-xx-small"},
    "mobilevit_xs": {"timm": "timm/mobilevit_xs.cvnets_in1k", "transformers": "apple/mobilevit-x-small"},
    "mobilevit_s": {"timm": "timm/mobilevit_s.cvnets_in1k", "transformers": "apple/mobilevit-small"},
}

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "checkpoint.pt")
_SAFETENSORS_MAX_HEADER = 100_000_000  # bytes; safetensors refuses longer headers


@dataclass
class LoadedWeights:
    """Weights converted to this package's names plus what travels with them."""

    state_dict: dict[str, Tensor]
    layout: Layout
    source: str
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    model_name: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        weight = self.state_dict.get("classifier.weight")
        return None if weight is None else int(weight.shape[0])


def read_pretrained(model_name: str, pretrained: bool | str | Path) -> LoadedWeights:
    """Resolve ``pretrained`` (True, a hub id, a file or a directory) and read its weights."""
    if pretrained is True:
        if model_name not in PUBLISHED:
            raise WeightsError(f"no published weights for {model_name!r}; pass a local file instead")
        return _read_hub(PUBLISHED[model_name]["timm"], model_name)
    if not isinstance(pretrained, (str, os.PathLike)):
        hint = (
            ": to load a state dict you hold, save it (torch.save or safetensors) and pass the file"
            if isinstance(pretrained, dict)
            else ""
        )
        raise TypeError(
            f"pretrained= takes True, False, a Hugging Face hub id or a local file/folder, "
            f"got {type(pretrained).__name__}{hint}"
        )
    if not str(pretrained).strip():
        raise ValueError("pretrained='' names no file; pass a path, a hub id, True or False")
    path = Path(pretrained).expanduser()
    if path.exists():
        weights = read_weights(path)
    elif is_hub_id(str(pretrained)):
        weights = _read_hub(str(pretrained), model_name)
    else:
        raise FileNotFoundError(f"pretrained weights not found: {pretrained} (no such file or directory)")
    if weights.model_name is not None and weights.model_name != model_name:
        raise WeightsError(
            f"{weights.source} holds a {weights.model_name} checkpoint, not {model_name}: "
            f"use create_model({weights.model_name!r}, pretrained=...)"
        )
    return weights


def read_weights(path: Path) -> LoadedWeights:
    """Read a weights file or a ``save_pretrained``-style directory in any supported layout."""
    directory = path if path.is_dir() else path.parent
    file = _find_weights_file(path) if path.is_dir() else path
    raw = _load_file(file)

    metadata: dict[str, Any] = {}
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        if not isinstance(raw.get("state_dict"), dict):
            raise WeightsError(f"{file} is a mobilevit-torch checkpoint that holds no weights (no 'state_dict')")
        metadata, raw = raw, raw["state_dict"]
    elif isinstance(raw, dict):
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise WeightsError(f"{file} does not contain a dictionary of tensors (a state dict)")

    state_dict = strip_wrapper_prefixes(dict(raw))
    try:
        layout = detect_layout(state_dict)
    except UnknownLayoutError as error:
        raise UnknownLayoutError(f"{file}: {error}") from None
    weights = LoadedWeights(convert_state_dict(state_dict, layout), layout, str(file))
    if metadata:
        weights.model_name = metadata.get("model_name")
        weights.model_args = dict(metadata.get("model_args") or {})
        weights.class_names = metadata.get("class_names")
        if metadata.get("preprocessing"):
            weights.preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
    elif layout == "transformers":
        weights.preprocessing = _hf_preprocessing(directory / "preprocessor_config.json")
        weights.class_names = _hf_class_names(directory / "config.json")
    elif layout == "timm":
        weights.preprocessing = TIMM_IMAGENET
    elif layout == "ml-cvnets":
        weights.preprocessing = APPLE_IMAGENET
    return weights


def load_into(model: nn.Module, weights: LoadedWeights, *, part: bool = False) -> None:
    """Load ``weights`` into ``model`` strictly; re-initialise the classifier if its size differs, and
    adapt RGB weights' first convolution to a model built with ``in_chans != 3`` (timm's rule).

    ``part``: ``model`` is part of the network (a backbone without the head or the last stages), so the
    checkpoint's other tensors are left out; every tensor ``model`` has must still be there."""
    state_dict = dict(weights.state_dict)
    expected = model.state_dict()
    stem, target = state_dict.get(STEM_WEIGHT), expected.get(STEM_WEIGHT)
    adapt_stem = (
        stem is not None
        and target is not None
        and stem.shape[1] == 3
        and target.shape[1] != 3
        and (stem.shape[0], *stem.shape[2:]) == (target.shape[0], *target.shape[2:])
    )
    if adapt_stem:
        state_dict[STEM_WEIGHT] = adapt_input_conv(stem, target.shape[1])
    if part:
        state_dict = {k: v for k, v in state_dict.items() if k in expected}
    num_classes = getattr(model, "num_classes", None)
    reinit_head = not part and weights.num_classes != num_classes
    if reinit_head:
        state_dict.pop("classifier.weight", None)
        state_dict.pop("classifier.bias", None)

    missing = [k for k in expected if k not in state_dict and not (reinit_head and k.startswith("classifier."))]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in state_dict
        if k in expected and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        name = getattr(model, "model_name", type(model).__name__)
        raise WeightsError(
            f"{weights.source} ({weights.layout} layout) does not match {name}"
            + _guess_variant(weights.state_dict, name)
            + _fused_hint(missing, unexpected)
            + _list_keys("missing", missing)
            + _list_keys("unexpected", unexpected)
            + _list_keys("with another shape", mismatched)
        )
    model.load_state_dict(state_dict, strict=not reinit_head)
    if adapt_stem:
        in_chans = target.shape[1]
        how = "summed over R, G, B" if in_chans == 1 else f"R, G, B repeated and scaled by 3/{in_chans}"
        logger.warning("input convolution adapted from 3 to %d channel(s), %s: %s", in_chans, how, weights.source)
    if reinit_head:
        have = f"{weights.num_classes} classes" if weights.num_classes is not None else "no classifier"
        if num_classes == 0:
            logger.warning("classifier left out (num_classes=0, features only): %s has %s", weights.source, have)
        else:
            logger.warning("classifier re-initialised: %s has %s, the model has %s", weights.source, have, num_classes)
    elif not part and weights.class_names is not None:
        problem = _class_names_problem(weights.class_names, num_classes)
        if problem is None:
            model.class_names = [str(name) for name in weights.class_names]
        else:
            logger.warning(
                "class names left out: %s %s, so predictions will show class ids", weights.source, problem
            )
    if weights.preprocessing is not None:
        model.preprocessing = weights.preprocessing


def _class_names_problem(names: Any, num_classes: int | None) -> str | None:
    """Why a checkpoint's class names cannot label the model's outputs (None: they can)."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, int)) for n in names):
        return f"holds class names as {type(names).__name__}, not a list of names"
    if len(names) != num_classes:
        return f"lists {len(names)} names for {num_classes} outputs"
    repeated = sorted(name for name, count in Counter(map(str, names)).items() if count > 1)
    if repeated:
        return f"lists {', '.join(repr(n) for n in repeated)} more than once"
    return None


def _find_weights_file(directory: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise WeightsError(f"cannot tell which file in {directory} holds the weights (weight files: {found})")


def _load_file(file: Path) -> Any:
    kind = _file_kind(file)  # by content, so a renamed file is still read the right way
    try:
        if kind == "safetensors" or (kind is None and file.suffix == ".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(file), device="cpu")
        with open(file, "rb") as handle:  # a handle, not a path: torch.load picks safetensors by the name alone
            return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if kind is None:  # an image, an ONNX file, text: torch.load's pickle reader fails on it somehow
            reason = "not a PyTorch or safetensors file"
        elif "Weights only load failed" in first_line:  # torch.load(weights_only=True) met a pickled object
            reason = (
                "it holds pickled Python objects, not just tensors (a whole model saved with "
                "torch.save(model)?), and those are never unpickled here; save model.state_dict() instead"
            )
        else:
            reason = f"a damaged or truncated {'PyTorch' if kind == 'torch' else kind} file ({first_line})"
        raise WeightsError(
            f"cannot read weights from {file}: {reason}. Expected a .safetensors file or a "
            "torch.save'd state dict of tensors (arbitrary pickled objects are refused)."
        ) from None


def _file_kind(file: Path) -> str | None:
    """``"torch"`` (a zip archive or a pickle), ``"safetensors"`` (a length-prefixed JSON header), or None."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return None
    # Safetensors first: its 8-byte header length may itself start with 0x80. The length is checked
    # against safetensors' own limit, not the file size, so a file cut short inside its header still
    # reads as a (truncated) safetensors file.
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= _SAFETENSORS_MAX_HEADER:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # torch.save's zip; a legacy pickle
        return "torch"
    return None


def _read_hub(repo_id: str, model_name: str) -> LoadedWeights:
    folder = repo_id.rsplit("/", 1)[-1]
    try:
        from huggingface_hub import snapshot_download

        directory = snapshot_download(repo_id, allow_patterns=["*.safetensors", "*.bin", "*.json"])
    except Exception as err:
        raise WeightsError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(err).__name__}). Without network "
            f"access, download it on a machine that has it (hf download {repo_id} --local-dir {folder}; "
            f"huggingface_hub before 0.34: huggingface-cli download) and pass the folder or a file in it: "
            f"pretrained={folder} on the command line, create_model({model_name!r}, pretrained={folder!r}) "
            "in Python"
        ) from None
    return read_weights(Path(directory))


def _hf_preprocessing(config_file: Path) -> Preprocessing:
    if not config_file.is_file():
        return APPLE_IMAGENET
    config = json.loads(config_file.read_text())
    crop = config.get("crop_size", {})
    crop_size = crop.get("height", 256) if isinstance(crop, dict) else int(crop)
    size = config.get("size", {})
    shortest = size.get("shortest_edge", crop_size * 288 // 256) if isinstance(size, dict) else int(size)
    resample = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(config.get("resample", 2), "bilinear")
    return Preprocessing(
        input_size=crop_size,
        crop_pct=min(1.0, crop_size / shortest),
        interpolation=resample,  # type: ignore[arg-type]
        channel_order="BGR" if config.get("do_flip_channel_order", True) else "RGB",
    )


def _hf_class_names(config_file: Path) -> list[str] | None:
    if not config_file.is_file():
        return None
    id2label = json.loads(config_file.read_text()).get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)]
    # transformers fills in LABEL_0, LABEL_1, ... when a model was saved without label names.
    return None if not names or all(re.fullmatch(r"LABEL_\d+", n) for n in names) else names


def _guess_variant(state_dict: dict[str, Tensor], model_name: str) -> str:
    from mobilevit_torch.models.variants import VARIANTS

    final = state_dict.get("final_conv.conv.weight")
    if final is None:
        return ""
    for size, config in VARIANTS.items():
        if config.final_chs == final.shape[0] and f"mobilevit_{size}" != model_name:
            return f"; it looks like a mobilevit_{size} checkpoint"
    return ""


def _fused_hint(missing: list[str], unexpected: list[str]) -> str:
    """A state dict saved from a ``fuse_for_inference`` copy: BatchNorm gone, biases on the convolutions."""
    if (
        missing
        and unexpected
        and all(".bn." in k for k in missing)
        and all(k.endswith("conv.bias") for k in unexpected)
    ):
        return (
            "; it looks like the state_dict of a fuse_for_inference copy (BatchNorm folded into the "
            "convolutions), which cannot be loaded back: save the original model's state_dict"
        )
    return ""


def _list_keys(kind: str, keys: list[str], limit: int = 8) -> str:
    if not keys:
        return ""
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"\n  {len(keys)} {kind}: " + ", ".join(keys[:limit]) + more
