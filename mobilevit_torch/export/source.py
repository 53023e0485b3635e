"""Which weights to export: a training checkpoint, or a registered model with optional pretrained weights.

``checkpoint=PATH`` names everything (model, classes, preprocessing). Without one, ``model`` (``xxs``,
``xs``, ``s`` or the registry name) plus ``pretrained`` (any layout ``create_model`` reads) and
``num_classes`` build the model. Every combination is checked, and every file found, before anything
is loaded; errors are :class:`ExportError` with one line that says what to pass instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mobilevit_torch.checkpoint import CheckpointError, NotACheckpointError, read_checkpoint
from mobilevit_torch.data.download import find_flowers
from mobilevit_torch.export.errors import ExportError
from mobilevit_torch.export.request import check_source
from mobilevit_torch.registry import UnknownModelError, create_model, list_models
from mobilevit_torch.weights import WeightsError, read_pretrained

logger = logging.getLogger("mobilevit_torch")


@dataclass(frozen=True)
class ModelSource:
    """A checked request for a model: what to build and from which weights."""

    model_name: str
    checkpoint: Path | None = None
    pretrained: bool | str | None = None
    num_classes: int | None = None
    training_config: dict[str, Any] = field(default_factory=dict)  # the checkpoint's, when it has one

    def describe(self) -> str:
        if self.checkpoint is not None:
            return str(self.checkpoint)
        if self.pretrained:
            return f"{self.model_name} with weights {self.pretrained}"
        return f"{self.model_name} (random initialisation)"


def registry_name(model: str) -> str:
    """``xxs`` -> ``mobilevit_xxs``; a registered full name is kept; anything else is an error."""
    name = model if model.startswith("mobilevit_") else f"mobilevit_{model}"
    if name not in list_models():
        sizes = ", ".join(n.removeprefix("mobilevit_") for n in list_models())
        raise ExportError(f"unknown model {model!r}: choose one of {sizes}")
    return name


def resolve_source(
    *,
    checkpoint: str | Path | None,
    model: str | None,
    pretrained: bool | str | Path | None,
    num_classes: int | None,
) -> ModelSource:
    """Check the combination and the files; read the checkpoint's description (not its use)."""
    pretrained = check_source(checkpoint=checkpoint, model=model, pretrained=pretrained, num_classes=num_classes)
    if checkpoint is None:
        assert model is not None  # check_source refuses neither
        name = registry_name(model)
        if pretrained and num_classes is not None:
            _check_pretrained_classes(name, pretrained, num_classes)
        return ModelSource(name, pretrained=pretrained or None, num_classes=num_classes)

    path = Path(checkpoint).expanduser()
    try:
        payload = read_checkpoint(path)
    except NotACheckpointError as error:
        raise ExportError(f"{error}; for other weights pass model=xxs|xs|s pretrained={path}") from None
    except (FileNotFoundError, CheckpointError) as error:
        raise ExportError(str(error)) from None
    stored = payload["model_name"]
    if stored not in list_models():
        raise ExportError(f"{path} does not name a registered model (model_name={stored!r})")
    if model is not None and registry_name(model) != stored:
        raise ExportError(f"{path} holds a {stored} checkpoint, not {registry_name(model)}: drop model= or fix it")
    stored_classes = len(payload["state_dict"].get("classifier.weight", ()))
    if num_classes is not None and num_classes != stored_classes:
        raise ExportError(
            f"num_classes={num_classes} does not match the checkpoint's {stored_classes} classes "
            "(exporting a re-initialised classifier is never useful): drop num_classes="
        )
    config = payload.get("config")
    return ModelSource(stored, checkpoint=path, training_config=config if isinstance(config, dict) else {})


def _check_pretrained_classes(model_name: str, pretrained: bool | str, num_classes: int) -> None:
    """Refuse a ``num_classes`` that differs from the weights' classifier, as for a checkpoint: the
    classifier would be re-initialised at random, and the exported file would answer nonsense."""
    try:
        stored = read_pretrained(model_name, pretrained).num_classes
    except (WeightsError, FileNotFoundError) as error:
        raise ExportError(" ".join(str(error).split())) from None
    if stored is not None and stored != num_classes:
        raise ExportError(
            f"num_classes={num_classes} does not match the {stored} classes of the weights {pretrained} "
            "(exporting a re-initialised classifier is never useful): drop num_classes="
        )


def load_model(source: ModelSource) -> nn.Module:
    """Build the model with its weights, in eval mode on the CPU."""
    try:
        if source.checkpoint is not None:
            model = create_model(source.model_name, pretrained=source.checkpoint)
        else:
            model = create_model(
                source.model_name, pretrained=source.pretrained or False, num_classes=source.num_classes
            )
    except (WeightsError, UnknownModelError, FileNotFoundError) as error:
        raise ExportError(" ".join(str(error).split())) from None
    if source.checkpoint is None and not source.pretrained:
        logger.warning("exporting %s with random weights (no checkpoint= or pretrained= given)", source.model_name)
    return model.eval()


def checkpoint_data_root(source: ModelSource) -> Path | None:
    """The image folder the checkpoint was trained on, when its config names one that exists here: for
    ``data=flowers`` the class folders training found under its ``data.root`` (``flower_photos/``)."""
    data = source.training_config.get("data")
    root = data.get("root") if isinstance(data, dict) else None
    if not isinstance(root, str) or not root:
        return None
    path = Path(root).expanduser()
    if data.get("kind") == "flowers":
        return find_flowers(path)
    return path if path.is_dir() else None
