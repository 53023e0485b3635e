"""A small model registry: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

ModelBuilder = Callable[..., nn.Module]
_MODELS: dict[str, ModelBuilder] = {}


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message lists the closest names."""


def _register_builtin_models() -> None:
    """Import the package's own builders, which register themselves (``mobilevit_torch.models``), before
    the registry is read or added to: they are there however the registry was imported."""
    import mobilevit_torch.models  # noqa: F401  (while it is being imported, this returns at once)


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Register ``builder`` under its function name. Registering a name twice is an error."""
    _register_builtin_models()
    name = builder.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered ({_MODELS[name].__module__})")
    _MODELS[name] = builder
    return builder


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    if not isinstance(pattern, str):
        raise TypeError(f"list_models() takes a shell-style pattern such as '*xs', got {type(pattern).__name__}")
    _register_builtin_models()
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def get_model_builder(name: str) -> ModelBuilder:
    if not isinstance(name, str):
        raise TypeError(f"a model name is a string such as 'mobilevit_xxs', got {type(name).__name__} {name!r}")
    _register_builtin_models()
    if name not in _MODELS:
        close = _closest_names(name)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")
    return _MODELS[name]


def _closest_names(name: str) -> list[str]:
    """Up to three registered names for a mistyped one; a name that differs only in case, ``-`` for ``_``,
    a ``timm/`` prefix, a ``.tag`` suffix or the ``mobilevit_`` prefix (``xxs``, as ``train.py model=xxs``) first."""
    key = name.lower().replace("-", "_")
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    same = [n for n in (key, stem, f"mobilevit_{stem}") if n in _MODELS]
    close = difflib.get_close_matches(key, list(_MODELS), n=3, cutoff=0.4)
    return list(dict.fromkeys(same + close))[:3]


def model_arguments(name: str) -> list[str]:
    """The keyword arguments ``create_model(name, ...)`` accepts besides ``pretrained``."""
    builder = get_model_builder(name)
    signature = inspect.signature(builder)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        # One-line builders forward their keywords to the class they return.
        signature = inspect.signature(typing.get_type_hints(builder)["return"])
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in signature.parameters.values() if p.kind in kinds and p.name != "config"]


def create_model(
    name: str,
    pretrained: bool | str | Path = False,
    num_classes: int | None = None,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model by name, optionally loading weights.

    Args:
        name: a registered name, e.g. ``"mobilevit_xxs"`` (see :func:`list_models`).
        pretrained: ``False``; ``True`` for the published ImageNet weights (needs network access);
            a Hugging Face hub id (``"timm/mobilevit_xxs.cvnets_in1k"``, ``"apple/mobilevit-xx-small"``);
            or a local file/directory in the timm, transformers, ml-cvnets or mobilevit-torch layout.
            RGB weights fit a model with ``in_chans != 3``: the first convolution is adapted (logged).
        num_classes: classifier size. ``None`` means the checkpoint's when loading weights, else 1000.
            When it differs from the checkpoint's, the classifier is re-initialised (a warning says so).
        features_only: return the network without its head, whose forward gives the feature maps of the
            stages ``out_indices`` as a list (timm's name; the model's ``as_backbone``).
        out_indices: with ``features_only``, which stages (default all; ``feature_info`` lists them).
        **kwargs: the model's own keyword arguments (``drop_rate``, ``dropout``, ``drop_path_rate``, ...).
            Unknown ones raise.
    """
    get_model_builder(name)
    accepted = model_arguments(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        hints = [
            f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, accepted, 1)) else repr(u)
            for u in unknown
        ]
        raise TypeError(
            f"create_model({name!r}) got unknown argument(s) {', '.join(hints)}; "
            f"accepted: pretrained, features_only, out_indices, {', '.join(accepted)}"
        )
    if out_indices is not None and not features_only:
        raise ValueError("out_indices picks the feature maps of a backbone: pass features_only=True with it")
    if features_only and num_classes:
        raise ValueError(f"features_only=True builds no classifier; num_classes={num_classes} has no meaning here")
    weights = None
    model_kwargs = dict(kwargs)
    if pretrained is not False and pretrained is not None:
        from mobilevit_torch.weights import read_pretrained

        weights = read_pretrained(name, pretrained)
        model_kwargs = {k: v for k, v in weights.model_args.items() if k in accepted and k != "num_classes"}
        if ignored := sorted(set(weights.model_args) - set(accepted) - {"num_classes"}):
            logger.warning(
                "%s: model_args %s are not arguments of %s; left out", weights.source, ", ".join(ignored), name
            )
        model_kwargs.update(kwargs)
        if num_classes is None and weights.num_classes is not None:
            num_classes = weights.num_classes
    if features_only:
        num_classes = 0  # no classifier to build
    model = _build(name, 1000 if num_classes is None else num_classes, model_kwargs)
    if features_only:
        if not callable(getattr(model, "as_backbone", None)):
            raise TypeError(f"{name!r} cannot be built with features_only=True (its model has no as_backbone)")
        model = model.as_backbone(out_indices)
    if weights is not None:
        from mobilevit_torch.weights import load_into

        # A backbone takes its part of whole-model weights (and a backbone's own, saved with fewer stages).
        load_into(model, weights, part=features_only)
    return model


def _build(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    model = get_model_builder(name)(num_classes=num_classes, **kwargs)
    # What a checkpoint needs to rebuild this model.
    model.model_name = name
    model.model_args = {"num_classes": getattr(model, "num_classes", num_classes), **kwargs}  # as the model read it
    return model
