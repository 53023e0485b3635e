"""Typed training configuration. ``train.py`` turns Hydra's config into these plain dataclasses;
the library never sees a ``DictConfig``. Every value is type-checked here, so a wrong override
fails before any work with a message naming the key."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mobilevit_torch.hub_ids import is_hub_id


class ConfigError(ValueError):
    """A configuration value of the wrong type or out of range; the message names the key."""


@dataclass
class ModelConfig:
    name: str = "mobilevit_xxs"
    drop_rate: float = 0.1  # before the classifier
    dropout: float | None = None  # inside the transformer; None: the variant's (ml-cvnets) value
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this at the last block; 0: off


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
    resize: int = 0  # side of the cached (squashed) training images; 0: data.img_size / crop_pct
    crop_pct: float = 0.0  # resize 0: cache at img_size / crop_pct (keras: the crop's share); 0: the model's
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
    cudnn_benchmark: bool = False  # CUDA: cuDNN times its kernels per input shape in epoch 1 (did not pay: NOTES)
    amp: bool = True  # bf16 autocast where the GPU supports it (fp16 + GradScaler otherwise); off on CPU
    channels_last: bool = True
    fused_norm: bool = True  # CUDA: BatchNorm + SiLU as fused Triton kernels in training (layers/fused_norm.py)
    layernorm_low_precision: bool = False  # autocast: LayerNorms in bf16/fp16, not float32 (layers/layer_norm.py)
    log_every: int = 20  # steps between progress-bar updates (each is a host sync)
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True
    max_steps_per_epoch: int = 0  # > 0 truncates epochs (smoke tests)
    stop_after: int = 0  # > 0: stop (resumably) after this many epochs in this invocation

    def validate(self) -> TrainConfig:
        """Every setting with a natural range checked; the first one outside it is a :class:`ConfigError`
        naming the key, the allowed range and the value."""
        data, recipe, model = self.data, self.recipe, self.model
        positive = {
            "epochs": self.epochs,
            "log_every": self.log_every,
            "data.img_size": data.img_size,
            "data.batch_size": data.batch_size,
            "data.eval_batch_size": data.eval_batch_size,
            "recipe.accum_steps": recipe.accum_steps,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be positive, got {value}")
        at_least_zero = {
            "seed": self.seed,
            "max_steps_per_epoch": self.max_steps_per_epoch,
            "stop_after": self.stop_after,
            "data.num_workers": data.num_workers,
            "recipe.weight_decay": recipe.weight_decay,
            "recipe.warmup_epochs": recipe.warmup_epochs,
            "recipe.min_lr": recipe.min_lr,
            "recipe.clip_grad": recipe.clip_grad,
            "recipe.resize": recipe.resize,
            "recipe.mixup": recipe.mixup,
            "recipe.cutmix": recipe.cutmix,
        }
        for key, value in at_least_zero.items():
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        if self.seed >= 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        _in_range("model.drop_rate", model.drop_rate, 0.0, 1.0)
        if model.dropout is not None:
            _in_range("model.dropout", model.dropout, 0.0, 1.0)
        _in_range("model.drop_path_rate", model.drop_path_rate, 0.0, 1.0)
        _in_range("recipe.label_smoothing", recipe.label_smoothing, 0.0, 1.0)
        _in_range("recipe.ema_decay", recipe.ema_decay, 0.0, 1.0)
        if not 0.0 <= recipe.hflip <= 1.0:
            raise ConfigError(f"recipe.hflip (a probability) must be in [0, 1], got {recipe.hflip}")
        if not 0.0 < data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {data.val_fraction}")
        if not data.root:
            if data.kind == "imagefolder":
                raise ConfigError("data=imagefolder needs data.root=PATH (a folder with one sub-folder per class)")
            raise ConfigError("data.root must not be empty")
        if data.img_size % 32:
            raise ConfigError(f"data.img_size must be a multiple of 32 (the network's stride), got {data.img_size}")
        if data.multiscale_sizes is not None:
            sizes = data.multiscale_sizes
            if not sizes or any(size <= 0 or size % 32 for size in sizes):
                raise ConfigError(
                    "data.multiscale_sizes must be null (sizes around data.img_size) or a list of positive "
                    f"multiples of 32 (the network's stride), got {sizes}"
                )
        if data.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", data.sha256):
            raise ConfigError(f"data.sha256 must be empty or 64 hexadecimal digits, got {data.sha256!r}")
        if recipe.lr <= 0:
            raise ConfigError(f"recipe.lr must be positive, got {recipe.lr}")
        if recipe.schedule == "cosine" and recipe.min_lr > recipe.lr:
            raise ConfigError(
                f"recipe.min_lr must be in [0, recipe.lr={recipe.lr}] (the cosine schedule decays to it), "
                f"got {recipe.min_lr}"
            )
        if 0 < recipe.resize < data.img_size:
            raise ConfigError(
                f"recipe.resize must be 0 (the model's resize size) or at least data.img_size={data.img_size} "
                f"(the training crops are taken from images of that size), got {recipe.resize}"
            )
        pair = recipe.rrc_scale
        if len(pair) != 2 or not 0 < pair[0] <= pair[1] <= 1:
            raise ConfigError(
                f"recipe.rrc_scale (fractions of the image area) must be [low, high] with 0 < low <= high <= 1, "
                f"got {pair}"
            )
        pair = recipe.rrc_ratio
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise ConfigError(f"recipe.rrc_ratio must be [low, high] with 0 < low <= high, got {pair}")
        if (recipe.mixup > 0 or recipe.cutmix > 0) and data.batch_size % 2:
            raise ConfigError(
                f"data.batch_size must be even with mixup/cutmix (pairs of images), got {data.batch_size}"
            )
        if not 0.0 <= recipe.crop_pct <= 1.0:
            raise ConfigError(f"recipe.crop_pct must be in (0, 1], or 0 for the model's own, got {recipe.crop_pct}")
        if recipe.randaugment and data.cache:
            raise ConfigError(
                "recipe.randaugment=true runs per image in DataLoader workers: add data.cache=false "
                "(the decoded-image cache augments whole batches on the device: crops and flips only)"
            )
        return self

    def check_paths(self) -> TrainConfig:
        """Paths that must exist before any work starts."""
        if self.resume and Path(self.resume).expanduser().is_dir():
            hint = Path(self.resume) / "last.pt"
            raise ConfigError(f"resume: {self.resume} is a folder; name its checkpoint, e.g. resume={hint}")
        if self.resume and not Path(self.resume).expanduser().is_file():
            raise ConfigError(f"resume: no such checkpoint file: {self.resume}")
        pretrained = None if self.resume else self.pretrained  # a resume starts from its checkpoint's weights
        if isinstance(pretrained, str) and not Path(pretrained).expanduser().exists() and not is_hub_id(pretrained):
            raise ConfigError(f"pretrained: no such file or folder: {pretrained}")
        root = Path(self.data.root).expanduser()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"data.root: {self.data.root} is a file, not a folder (one sub-folder per class)")
        if self.data.kind == "imagefolder" and not root.is_dir():
            raise ConfigError(f"data.root: no such folder: {self.data.root}")
        return self


def config_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config dataclass (``data.root``), nested ones included."""
    keys = []
    for f in dataclasses.fields(cls):
        keys.append(prefix + f.name)
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(config_keys(hint, f"{prefix}{f.name}."))  # type: ignore[arg-type]
    return keys


def _in_range(key: str, value: float, low: float, high: float) -> None:
    """``low <= value < high``, or a :class:`ConfigError` naming the key and the range."""
    if not low <= value < high:
        raise ConfigError(f"{key} must be in [{low:g}, {high:g}), got {value}")


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
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")
