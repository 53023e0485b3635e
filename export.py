"""Export a MobileViT to ONNX or TFLite, verified against PyTorch: ``python export.py format=onnx checkpoint=PATH``.

Hydra stops here: the composed config becomes plain arguments to ``export_model``. The file goes to
``output=PATH``, or by default into Hydra's run directory (``outputs/export/<date>_<time>/``), with
``<file>.json`` and ``<file>.labels.txt`` beside it, and nothing else: Hydra's ``.hydra/`` record is off,
and the run directory is removed again when the file went elsewhere. User mistakes end with one ``error:`` line and exit
status 2 (an unknown key too, before Hydra starts); a failed conversion or parity check with status 1.
"""

from __future__ import annotations

import inspect
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mobilevit_torch.cli import check_overrides, drop_unused_run_dir, fail

CONF = Path(__file__).resolve().parent / "conf"
CONFIG = CONF / "export.yaml"


def config_keys() -> list[str]:
    """Every settable key of conf/export.yaml, dotted (``data.root``), Hydra's own excluded."""
    config = OmegaConf.to_container(OmegaConf.load(CONFIG))
    assert isinstance(config, dict)

    def walk(node: dict[str, Any], prefix: str) -> list[str]:
        keys = []
        for key, value in node.items():
            if key in ("defaults", "hydra"):
                continue
            keys.append(prefix + key)
            if isinstance(value, dict):
                keys.extend(walk(value, f"{prefix}{key}."))
        return keys

    return walk(config, "")


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    # Our progress at INFO; the converters' own chatter (onnxscript's optimiser, ...) only when it warns.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("mobilevit_torch").setLevel(logging.INFO)
    from mobilevit_torch.export.errors import ConversionError, ExportError, ParityError
    from mobilevit_torch.export.request import check_arguments

    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    data = config.pop("data") or {}
    model = config.pop("model")  # model=xxs composes conf/model/xxs.yaml; only its registry name matters here
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    arguments = {
        **config,
        "model": model["name"] if isinstance(model, dict) else model,
        "data_root": data.get("root") if isinstance(data, dict) else data,
        "output_dir": run_dir,
    }
    try:
        # The checks that need no model first, torch-free: a wrong setting is told at once, not after
        # the seconds torch takes to import. export_model runs them again, with the rest.
        checked = inspect.signature(check_arguments).parameters
        check_arguments(**{key: value for key, value in arguments.items() if key in checked})
        from mobilevit_torch.export.exporter import export_model

        result = export_model(**arguments)
    except ExportError as error:
        fail(" ".join(str(error).split()), 2)
    except (ConversionError, ParityError) as error:
        fail(" ".join(str(error).split()), 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    finally:
        drop_unused_run_dir(run_dir)
    print(result.summary())
    shown = result.path.relative_to(Path.cwd()) if result.path.is_relative_to(Path.cwd()) else result.path
    path = shlex.quote(str(shown))
    print(f"try it on your photos: python evaluate.py {path} LABELLED_FOLDER, python predict.py {path} PHOTO")


if __name__ == "__main__":
    models = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    sys.argv[1:] = check_overrides(sys.argv[1:], config_keys(), {"model": models})
    main()
