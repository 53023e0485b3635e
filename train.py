"""Train MobileViT on a photo folder: ``python train.py model=xxs`` (tf_flowers by default).

Hydra stops here: the composed config becomes a plain ``TrainConfig`` and ``train()`` does the work.
``resume=PATH`` continues with the checkpoint's settings; only the keys the command line set apply on top.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mobilevit_torch.cli import check_overrides, drop_unused_run_dir, exit_code, keep_freed_memory, user_errors

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@user_errors
def main(cfg: DictConfig) -> float | None:
    from mobilevit_torch.training.config import config_from_dict  # torch-free: a wrong setting is told at once

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("hydra").setLevel(logging.WARNING)  # its launch lines: a multirun's job says its own below
    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    if hydra_config.mode == RunMode.MULTIRUN:  # Hydra's own launch lines are off (hydra_logging: none)
        logging.getLogger("mobilevit_torch").info(
            "multirun job #%d: %s -> %s", hydra_config.job.num, " ".join(hydra_config.overrides.task), output_dir
        )
    recorded = False  # whether this run wrote the folder's record (its folder held no run before)
    try:
        settings = OmegaConf.to_container(cfg, resolve=True)
        config = config_from_dict(settings).validate().check_paths()
        from mobilevit_torch.training.loop import train  # torch, torchvision: seconds
        from mobilevit_torch.training.resume import resume_settings
        from mobilevit_torch.training.summary import holds_run

        if config.resume:  # the checkpoint's settings, and the command line's where it set them
            config = config_from_dict(resume_settings(settings, explicit_keys(cfg))).validate().check_paths()
        elif not holds_run(output_dir):  # a folder that holds a run keeps its record (train() refuses it)
            record_config(cfg, output_dir)
            recorded = True
        memory = keep_freed_memory()  # before any large allocation
        if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 alone tells (train() does the same)
            logging.getLogger("mobilevit_torch").info("memory: %s", memory)
        summary = train(config, output_dir)
    except Exception as error:
        if recorded and exit_code(error) == 2 and not holds_run(output_dir):
            drop_setup_files(output_dir)  # refused (data, weights) before its first checkpoint or metrics
        raise
    finally:
        # Hydra makes the folder before this runs: a refused run, or a resume (which continues in the
        # checkpoint's folder), leaves it behind empty or holding only the record.
        drop_unused_run_dir(output_dir)
    return summary.get("best_val_acc")


def drop_setup_files(folder: Path) -> None:
    """Remove what a refused run wrote while setting up (its record, ``train.log``, ``split.json``), so
    that :func:`drop_unused_run_dir` can remove the folder; anything else in it stays."""
    import shutil

    from mobilevit_torch.training.run_log import remove_log_files

    remove_log_files()
    shutil.rmtree(folder / ".hydra", ignore_errors=True)
    for name in ("train.log", "split.json"):
        (folder / name).unlink(missing_ok=True)


def record_config(cfg: DictConfig, folder: Path) -> None:
    """Write Hydra's record of this run (``.hydra/config.yaml``, ``overrides.yaml``, ``hydra.yaml``) into ``folder``.

    conf/train.yaml turns Hydra's own writing of it off (``hydra.output_subdir: null``): Hydra writes it
    before train.py runs, over the record of a run already in the folder, and leaves it behind when the
    command is refused. Written here, it is written once the run is accepted, and never over another run's.
    """
    from mobilevit_torch.files import atomic_write

    hydra_config = HydraConfig.instance().cfg  # {"hydra": ...}, as Hydra saves it
    record = folder / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    for name, node in (
        ("config.yaml", cfg),
        ("hydra.yaml", hydra_config),
        ("overrides.yaml", HydraConfig.get().overrides.task),
    ):
        with atomic_write(record / name, encoding="utf-8") as file:
            file.write(OmegaConf.to_yaml(node))


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


def check_sweep(argv: list[str]) -> None:
    """With ``-m``, check every job's settings before the first job starts (each job checks its own
    again): a bad value in the sweep (``data.batch_size=8,0``) is told at once, not after the jobs before it
    trained. Sweeps Hydra itself cannot expand are left for Hydra to report."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from mobilevit_torch.cli import fail
    from mobilevit_torch.training.config import ConfigError, config_from_dict

    task = [arg for arg in argv if "=" in arg and not arg.startswith("-") and not arg.startswith("hydra")]
    try:
        jobs = [job for batch in BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task), None)
                for job in batch]  # fmt: skip
        with initialize_config_dir(str(CONF), version_base="1.3"):
            configs = [(job, compose("train", overrides=job)) for job in jobs]
    except HydraException:
        return
    for job, cfg in configs:
        try:
            config_from_dict(OmegaConf.to_container(cfg, resolve=True)).validate().check_paths()
        except ConfigError as error:
            fail(f"{error} (in the job {' '.join(job)})", 2)
    print(f"multirun: {len(configs)} job(s), settings checked; they run one after another", file=sys.stderr)


if __name__ == "__main__":
    from mobilevit_torch.training.config import config_keys

    groups = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in ("model", "data", "recipe")}
    sys.argv[1:] = check_overrides(sys.argv[1:], config_keys(), groups)
    if any(arg in ("-m", "--multirun") for arg in sys.argv[1:]):
        check_sweep(sys.argv[1:])
    main()
