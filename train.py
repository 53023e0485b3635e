"""Train MobileViT on a photo folder: ``python train.py model=xxs`` (tf_flowers by default).

Hydra stops here: the composed config becomes a plain ``TrainConfig`` and ``train()`` does the work.
``resume=PATH`` continues with the checkpoint's settings; only the keys the command line set apply on top.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mobilevit_torch.cli import check_overrides, keep_freed_memory, user_errors

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@user_errors
def main(cfg: DictConfig) -> float | None:
    from mobilevit_torch.training.config import config_from_dict
    from mobilevit_torch.training.loop import train
    from mobilevit_torch.training.resume import resume_settings

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        settings = OmegaConf.to_container(cfg, resolve=True)
        config = config_from_dict(settings).validate().check_paths()
        if config.resume:  # the checkpoint's settings, and the command line's where it set them
            config = config_from_dict(resume_settings(settings, explicit_keys(cfg))).validate().check_paths()
        logging.getLogger("mobilevit_torch").info("memory: %s", keep_freed_memory())  # before any large allocation
        summary = train(config, output_dir)
    finally:
        if cfg.get("resume"):  # a resume continues in the checkpoint's folder: drop the one Hydra made for it
            drop_if_only_hydra(output_dir)
    return summary.get("best_val_acc")


def explicit_keys(cfg: DictConfig) -> set[str]:
    """The config keys this command line set: each ``key=value`` override's key, and for a config group
    (``recipe=keras``) every key whose value differs from the composition without that override."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mobilevit_torch.training.resume import flatten

    hydra_config = HydraConfig.get()
    task = list(hydra_config.overrides.task)
    groups = set(hydra_config.runtime.choices)
    composed = flatten(OmegaConf.to_container(cfg, resolve=True))
    keys = set()
    for text, override in zip(task, OverridesParser.create().parse_overrides(task), strict=True):
        if override.key_or_group not in groups:
            keys.add(override.key_or_group)
            continue
        others = [other for other in task if other != text]
        without = flatten(OmegaConf.to_container(compose(hydra_config.job.config_name, overrides=others), resolve=True))
        keys |= {key for key, value in composed.items() if without.get(key, _ABSENT) != value}
    return keys


_ABSENT: Any = object()


def drop_if_only_hydra(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but Hydra's ``.hydra/`` record."""
    if folder.is_dir() and [path.name for path in folder.iterdir()] == [".hydra"]:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    from mobilevit_torch.training.config import config_keys

    groups = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in ("model", "data", "recipe")}
    check_overrides(sys.argv[1:], config_keys(), groups)
    main()
