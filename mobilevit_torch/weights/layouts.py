"""Published MobileViT checkpoint layouts and their conversion to this package's parameter names.

Three layouts exist besides ours:

- ``timm``: ``stages.2.1.transformer.0.attn.qkv.weight`` (``mobilevit_*`` in timm's byobnet).
- ``transformers``: ``mobilevit.encoder.layer.2.transformer.layer.0.attention.attention.query.weight``
  (``MobileViTForImageClassification``; separate query/key/value projections).
- ``ml-cvnets``: ``layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight`` (Apple's reference).

Conversion is a list of regular-expression renames per layout, applied in order to every key;
the transformers layout additionally concatenates query/key/value into one ``qkv`` tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Literal

from torch import Tensor, cat

Layout = Literal["mobilevit-torch", "timm", "transformers", "ml-cvnets"]
Rule = tuple[str, str | Callable[[re.Match[str]], str]]

# Prefixes added by wrappers: DistributedDataParallel, torch.compile, some trainers.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

_TIMM_RULES: list[Rule] = [
    (r"^head\.fc\.", "classifier."),
    (r"\.conv1_1x1\.", ".expand."),
    (r"\.conv2_kxk\.", ".depthwise."),
    (r"\.conv3_1x1\.", ".project."),
    (r"\.conv_kxk\.", ".conv_local."),
    (r"\.conv_1x1\.", ".conv_in."),
    (r"\.conv_proj\.", ".conv_out."),
]

_TRANSFORMERS_RULES: list[Rule] = [
    (r"^mobilevit\.", ""),
    (r"^conv_stem\.", "stem."),
    (r"^conv_1x1_exp\.", "final_conv."),
    (r"^encoder\.layer\.(\d+)\.layer\.(\d+)\.", r"stages.\1.\2."),  # stages 0-1: MV2 blocks only
    (r"^encoder\.layer\.(\d+)\.downsampling_layer\.", r"stages.\1.0."),  # stages 2-4: strided MV2 ...
    (r"^encoder\.layer\.(\d+)\.", r"stages.\1.1."),  # ... then the MobileViT block
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
    (r"\.expand_1x1\.", ".expand."),
    (r"\.conv_3x3\.", ".depthwise."),
    (r"\.reduce_1x1\.", ".project."),
    (r"\.conv_kxk\.", ".conv_local."),
    (r"\.conv_1x1\.conv\.", ".conv_in."),
    (r"\.conv_projection\.", ".conv_out."),
    (r"\.fusion\.", ".conv_fusion."),
    (r"\.transformer\.layer\.(\d+)\.", r".transformer.\1."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.attention\.attention\.(query|key|value)\.", r".attn.\1."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"\.layernorm\.", ".norm."),
]

_CVNETS_RULES: list[Rule] = [
    (r"^conv_1\.block\.", "stem."),
    (r"^conv_1x1_exp\.block\.", "final_conv."),
    (r"^classifier\.fc\.", "classifier."),
    (r"^layer_(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}."),  # layer_1..layer_5 -> stages 0..4
    (r"\.block\.exp_1x1\.block\.", ".expand."),
    (r"\.block\.conv_3x3\.block\.", ".depthwise."),
    (r"\.block\.red_1x1\.block\.", ".project."),
    (r"\.local_rep\.conv_3x3\.block\.", ".conv_local."),
    (r"\.local_rep\.conv_1x1\.block\.conv\.", ".conv_in."),
    (r"\.conv_proj\.block\.", ".conv_out."),
    (r"\.fusion\.block\.", ".conv_fusion."),
    (r"\.norm\.", ".bn."),  # ConvLayer's BatchNorm; LayerNorms are matched below by position
    (r"\.global_rep\.(\d+)\.pre_norm_mha\.0\.", r".transformer.\1.norm1."),
    (r"\.global_rep\.(\d+)\.pre_norm_mha\.1\.qkv_proj\.", r".transformer.\1.attn.qkv."),
    (r"\.global_rep\.(\d+)\.pre_norm_mha\.1\.out_proj\.", r".transformer.\1.attn.proj."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.0\.", r".transformer.\1.norm2."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.1\.", r".transformer.\1.mlp.fc1."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.4\.", r".transformer.\1.mlp.fc2."),
    (r"\.global_rep\.\d+\.(weight|bias)$", r".norm.\1"),  # the LayerNorm after the last layer
]

_RULES: dict[Layout, list[Rule]] = {
    "mobilevit-torch": [],
    "timm": _TIMM_RULES,
    "transformers": _TRANSFORMERS_RULES,
    "ml-cvnets": _CVNETS_RULES,
}


class WeightsError(ValueError):
    """Weights that cannot be read, or do not fit the model."""


class UnknownLayoutError(WeightsError):
    """The tensors do not look like any known MobileViT checkpoint layout (a :class:`WeightsError`,
    so the command-line tools report it in one line)."""


def strip_wrapper_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``module.``/``_orig_mod.``/``model.`` prefixes shared by every key."""
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            return strip_wrapper_prefixes({key[len(prefix) :]: v for key, v in state_dict.items()})
    return state_dict


def detect_layout(keys: Iterable[str]) -> Layout:
    keys = list(keys)

    def has(predicate: Callable[[str], bool]) -> bool:
        return any(predicate(k) for k in keys)

    if has(_is_mobilevit_v2_key):
        raise UnknownLayoutError(
            "these weights are MobileViT v2 (arXiv 2206.02680: separable linear attention, "
            "timm's mobilevitv2_*, transformers' MobileViTV2, apple/mobilevitv2-*), a different network; "
            "this package implements MobileViT (v1: mobilevit_xxs, mobilevit_xs, mobilevit_s)"
        )
    if has(lambda k: k.startswith(("mobilevit.", "encoder.layer.", "conv_stem."))):
        return "transformers"
    if has(lambda k: ".global_rep." in k or k.startswith(("conv_1.block.", "layer_1."))):
        return "ml-cvnets"
    if has(lambda k: ".conv1_1x1." in k or ".conv_kxk." in k or k.startswith("head.fc.")):
        return "timm"
    if has(lambda k: ".conv_local." in k or ".expand.conv." in k or k.startswith("stem.bn.")):
        return "mobilevit-torch"
    sample = ", ".join(keys[:5]) or "(no tensors)"
    raise UnknownLayoutError(
        f"these weights are not a MobileViT checkpoint in any known layout (timm, transformers, "
        f"ml-cvnets, mobilevit-torch); first keys: {sample}"
    )


def _is_mobilevit_v2_key(key: str) -> bool:
    """transformers' ``mobilevitv2.`` prefix; v2's separable attention ``qkv_proj`` (timm, transformers),
    which in ml-cvnets v1 only appears inside ``pre_norm_mha``; ml-cvnets v2's ``pre_norm_attn``."""
    return (
        key.startswith("mobilevitv2.")
        or ".pre_norm_attn." in key
        or (".qkv_proj." in key and ".pre_norm_mha." not in key)
    )


def convert_state_dict(state_dict: dict[str, Tensor], layout: Layout) -> dict[str, Tensor]:
    """Rename every tensor of ``state_dict`` from ``layout`` to this package's names."""
    rules = [(re.compile(pattern), replacement) for pattern, replacement in _RULES[layout]]
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key)
        converted[key] = value
    if layout == "transformers":
        converted = _fuse_qkv(converted)
    return converted


def _fuse_qkv(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``attn.query/key/value.{weight,bias}`` -> ``attn.qkv.{weight,bias}`` (stacked q, k, v)."""
    fused: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"(.*\.attn\.)(query|key|value)\.(weight|bias)", key)
        if match is None:
            fused[key] = value
        elif match[2] == "query":
            prefix, kind = match[1], match[3]
            parts = [state_dict.get(f"{prefix}{name}.{kind}") for name in ("query", "key", "value")]
            if any(part is None for part in parts):
                fused[key] = value  # incomplete: left for the strict loader to report
            else:
                fused[f"{prefix}qkv.{kind}"] = cat(parts, dim=0)  # type: ignore[arg-type]
        elif f"{match[1]}query.{match[3]}" not in state_dict:
            fused[key] = value
    return fused
