"""Typed training configuration. ``train.py`` turns Hydra's config into these plain dataclasses;
the library never sees a ``DictConfig``. Every value is type-checked here, so a wrong override
fails before any work with a message naming the key."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """A configuration value of the wrong type or out of range; the message names the key."""


@dataclass
class ModelConfig:
    name: str = "mobilevit_xxs"
    drop_rate: float = 0.1  # before the classifier
    dropout: float | None = None  # inside the transformer; None: the variant's (ml-cvnets) value


@dataclass
class DataConfig:
    kind: Literal["flowers", "imagefolder"] = "flowers"
    root: str = "data/flowers"
    img_size: int = 256
    batch_size: int = 64
    eval_batch_size: int = 250
    num_workers: int = 4
    val_fraction: float = 0.1
    cache: bool = True  # decode every image once into a uint8 tensor (kept on the training device)
    cache_dir: str = "~/.cache/mobilevit-torch"
    multiscale: bool = False
    multiscale_sizes: list[int] | None = None
    url: str = ""  # tf_flowers archive; empty: the official TensorFlow URL
    sha256: str = ""


@dataclass
class RecipeConfig:
    name: str = "default"
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 0.002
    weight_decay: float = 0.05
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = 5.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    ema_decay: float = 0.9995  # 0 disables the EMA
    clip_grad: float = 1.0  # max gradient norm, 0 disables
    accum_steps: int = 1
    augment: Literal["rrc", "keras"] = "rrc"
    resize: int = 0  # size of the cached training images; 0: the model's resize size for img_size
    rrc_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    rrc_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    hflip: float = 0.5
    mixup: float = 0.2
    cutmix: float = 0.0
    randaugment: bool = False  # per-image DataLoader path only (data.cache=false)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    epochs: int = 300
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    resume: str | None = None
    pretrained: str | bool | None = None
    compile: bool = False
    cuda_graphs: bool = True  # on a single CUDA GPU, replay each training update as one CUDA graph
    cudnn_benchmark: bool = True  # CUDA: cuDNN times its kernels once per input shape (during epoch 1)
    amp: bool = True  # bf16 autocast where the GPU supports it (fp16 + GradScaler otherwise); off on CPU
    channels_last: bool = True
    fused_norm: bool = False  # CUDA: BatchNorm + SiLU as fused Triton kernels in training (layers/fused_norm.py)
    log_every: int = 20  # steps between progress-bar updates (each is a host sync)
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True
    max_steps_per_epoch: int = 0  # > 0 truncates epochs (smoke tests)
    stop_after: int = 0  # > 0: stop (resumably) after this many epochs in this invocation

    def validate(self) -> TrainConfig:
        positive = {
            "epochs": self.epochs,
            "data.img_size": self.data.img_size,
            "data.batch_size": self.data.batch_size,
            "data.eval_batch_size": self.data.eval_batch_size,
            "recipe.accum_steps": self.recipe.accum_steps,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be positive, got {value}")
        if self.data.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.data.num_workers}")
        if not 0.0 < self.data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.data.val_fraction}")
        if self.data.img_size % 32:
            raise ConfigError(
                f"data.img_size must be a multiple of 32 (the network's stride), got {self.data.img_size}"
            )
        if self.recipe.lr <= 0:
            raise ConfigError(f"recipe.lr must be positive, got {self.recipe.lr}")
        if not 0.0 <= self.recipe.ema_decay < 1.0:
            raise ConfigError(f"recipe.ema_decay must be in [0, 1), got {self.recipe.ema_decay}")
        for key in ("rrc_scale", "rrc_ratio"):
            pair = getattr(self.recipe, key)
            if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
                raise ConfigError(f"recipe.{key} must be [low, high] with 0 < low <= high, got {pair}")
        if (self.recipe.mixup > 0 or self.recipe.cutmix > 0) and self.data.batch_size % 2:
            raise ConfigError(
                f"data.batch_size must be even with mixup/cutmix (pairs of images), got {self.data.batch_size}"
            )
        if self.recipe.augment == "keras" and 0 < self.recipe.resize < self.data.img_size:
            raise ConfigError(f"recipe.resize ({self.recipe.resize}) must be >= data.img_size ({self.data.img_size})")
        return self

    def check_paths(self) -> TrainConfig:
        """Paths that must exist before any work starts."""
        if self.resume and not Path(self.resume).expanduser().is_file():
            raise ConfigError(f"resume: no such checkpoint file: {self.resume}")
        pretrained = None if self.resume else self.pretrained  # a resume starts from its checkpoint's weights
        if isinstance(pretrained, str) and not Path(pretrained).expanduser().exists() and not _HUB_ID.match(pretrained):
            raise ConfigError(f"pretrained: no such file or folder: {pretrained}")
        if self.data.kind == "imagefolder" and not Path(self.data.root).expanduser().is_dir():
            raise ConfigError(f"data.root: no such folder: {self.data.root}")
        return self


def config_from_dict(data: dict[str, Any], cls: type = TrainConfig, prefix: str = "") -> Any:
    """Build (and type-check) a config dataclass from plain nested dicts."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (valid: {', '.join(sorted(names))})")
    values = {name: _check(f"{prefix}{name}", data[name], hints[name]) for name in names if name in data}
    return cls(**values)


def _check(key: str, value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(value, hint, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(key, value, option)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: unexpected value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_check(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")
