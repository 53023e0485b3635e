"""Train MobileViT on a photo folder: ``python train.py model=xxs`` (tf_flowers by default).

Hydra stops here: the composed config becomes a plain ``TrainConfig`` and ``train()`` does the work.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

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

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    config = config_from_dict(OmegaConf.to_container(cfg, resolve=True)).validate().check_paths()
    logging.getLogger("mobilevit_torch").info("memory: %s", keep_freed_memory())  # before any large allocation
    summary = train(config, HydraConfig.get().runtime.output_dir)
    return summary.get("best_val_acc")


if __name__ == "__main__":
    from mobilevit_torch.training.config import config_keys

    groups = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in ("model", "data", "recipe")}
    check_overrides(sys.argv[1:], config_keys(), groups)
    main()
