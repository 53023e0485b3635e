"""train.py as a user runs it: config composition, override errors, SIGTERM, torchrun DDP, real photos."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mobilevit_torch.checkpoint import load_checkpoint
from mobilevit_torch.registry import list_models
from mobilevit_torch.training.config import config_from_dict
from mobilevit_torch.training.loop import train
from tests.conftest import REPO
from tests.train_helpers import CLASSES, as_overrides, make_folder, tiny_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("photos"), odd_files=False)


def run_train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV
    )


def options(group: str) -> list[str]:
    """The choices of a config group: its files in conf/<group>/, so a new one is tested as it lands."""
    return sorted(path.stem for path in (REPO / "conf" / group).glob("*.yaml"))


def test_the_model_configs_are_the_registry() -> None:
    assert [f"mobilevit_{name}" for name in options("model")] == sorted(list_models())


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("data", options("data"))
@pytest.mark.parametrize("recipe", options("recipe"))
def test_every_config_composes(model: str, data: str, recipe: str) -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"data={data}", f"recipe={recipe}", "data.root=photos"])
    from omegaconf import OmegaConf

    config = config_from_dict(OmegaConf.to_container(cfg, resolve=True)).validate()
    assert config.model.name == f"mobilevit_{model}"
    assert config.model.drop_path_rate == 0.0  # stochastic depth is opt-in
    assert config.data.kind == data
    if recipe == "keras":  # the original example, as written
        assert (config.epochs, config.data.batch_size, config.recipe.optimizer, config.recipe.lr) == (
            30,
            64,
            "adam",
            0.002,
        )
        assert (config.recipe.schedule, config.recipe.label_smoothing) == ("constant", 0.1)


@pytest.mark.parametrize(("img_size", "resized"), [(256, 280), (64, 70), (320, 350)])
def test_keras_recipe_resizes_in_proportion_to_the_crop(img_size: int, resized: int) -> None:
    """The example resizes to 280 and crops 256; at other sizes the crop keeps that share of the image."""
    from omegaconf import OmegaConf

    from mobilevit_torch.preprocessing import Preprocessing
    from mobilevit_torch.training.pipeline import train_cache_size

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["recipe=keras", "data.root=photos", f"data.img_size={img_size}"])
    config = config_from_dict(OmegaConf.to_container(cfg, resolve=True)).validate()
    assert train_cache_size(config.recipe, Preprocessing(input_size=img_size)) == resized


@pytest.mark.parametrize(
    ("key", "default"), [("cudnn_benchmark", False), ("fused_norm", True), ("layernorm_low_precision", False)]
)
def test_gpu_switch_overrides_reach_the_config(key: str, default: bool) -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        as_default = compose("train", overrides=["data.root=photos"])
        flipped = compose("train", overrides=["data.root=photos", f"{key}={str(not default).lower()}"])
    from omegaconf import OmegaConf

    assert getattr(config_from_dict(OmegaConf.to_container(as_default, resolve=True)).validate(), key) is default
    assert getattr(config_from_dict(OmegaConf.to_container(flipped, resolve=True)).validate(), key) is not default


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=abc", "epochs must be an integer"),
        ("no_such_key=1", "no_such_key"),
        ("data.batch_size=-4", "data.batch_size must be positive"),
        ("model=xxxs", "unknown model 'xxxs' (did you mean model=xxs?): choose model=s|xs|xxs"),
        ("recipe=kers", "did you mean recipe=keras?"),
        ("data.batchsize=8", "unknown option 'data.batchsize' (did you mean 'data.batch_size'?)"),
        ("lr=0.1", "unknown option 'lr' (did you mean 'recipe.lr'?)"),
        ("device=tpu", "device must be one of"),
        ("resume=/no/such/last.pt", "resume: no such checkpoint file"),
        ("resume=conf", "resume: conf is a folder; name its checkpoint, e.g. resume=conf/last.pt"),
        ("pretrained=/no/such/weights.pt", "pretrained: no such file"),
        ("pretrained=runs/best.pt", "pretrained: no such file"),  # not a hub id
        ("log_every=0", "log_every must be positive, got 0"),
        ("model.drop_rate=1.5", "model.drop_rate must be in [0, 1), got 1.5"),
        ("data.multiscale_sizes=[50,70]", "data.multiscale_sizes must be null"),
        ("data.multiscale_sizes=[160,192", "quote it: data.multiscale_sizes='\"[160,192\"'"),
        ("pretrained=runs/été (1)/best.pt", "pretrained: no such file"),  # quoted for Hydra, then checked
    ],
)
def test_wrong_override_is_one_short_line(override: str, message: str) -> None:
    result = run_train("data=imagefolder", "data.root=.", override, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "override",
    ["epochs=abc", "data.root=/no/such/photos", "resume=/no/such/last.pt", "pretrained=/no/such/weights.pt"],
)
def test_a_wrong_setting_is_told_before_torch_is_imported(override: str, tmp_path: Path) -> None:
    """Settings and paths are checked before torch (seconds to import) is loaded: a typo is answered at once."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['train.py', 'data=imagefolder', 'data.root=.', {override!r}, 'hydra.run.dir={tmp_path}/run']\n"
        "try:\n"
        "    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.stdout.splitlines()[-2:] == ["exit 2", "torch imported: False"], done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_missing_data_root_is_named(tmp_path: Path) -> None:
    result = run_train("data=imagefolder", "data.root=/no/such/photos", f"hydra.run.dir={tmp_path / 'run'}", timeout=60)
    assert result.returncode == 2 and "/no/such/photos" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists(), "a refused run leaves no folder (not even Hydra's .hydra/)"
    fresh = tmp_path / "fresh"  # the default run directory (outputs/<model>/<time>) in an empty folder
    fresh.mkdir()
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "data=imagefolder"], cwd=fresh,
                            capture_output=True, text=True, timeout=60, env=ENV)  # fmt: skip
    assert result.returncode == 2 and "data=imagefolder needs data.root=PATH" in result.stderr, result.stderr
    assert list(fresh.iterdir()) == [], "nor the outputs/<model>/ folders Hydra made for it"
    result = run_train("data=imagefolder", "data.root=README.md", timeout=60)
    assert result.returncode == 2 and "README.md is a file, not a folder" in result.stderr, result.stderr


def test_a_run_refused_over_its_data_leaves_no_folder(tmp_path: Path) -> None:
    """Refused after setting up (record, train.log, split.json written): those go, with the folder."""
    single = tmp_path / "photos"
    single.mkdir()
    shutil.move(make_folder(tmp_path / "all", odd_files=False) / CLASSES[0], single)
    args = ["data=imagefolder", f"data.root={single}", "device=cpu", "data.img_size=64"]
    result = run_train(*args, f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert result.returncode == 2 and f"only one class ({CLASSES[0]})" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists(), "a refused run leaves no folder"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own file")
    result = run_train(*args, f"hydra.run.dir={tmp_path / 'mine'}", timeout=120)
    assert result.returncode == 2, result.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"], "only the run's own files go"


def test_sigterm_saves_resumable_checkpoint(folder: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path, folder, epochs=6, plots=False, tensorboard=False)
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "train.py", *as_overrides(config), f"hydra.run.dir={run}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert process.poll() is None, process.communicate()[1]
        assert time.time() < deadline, "no epoch finished in time"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted at epoch" in stderr and "resume=" in stderr and "Traceback" not in stderr
    checkpoint = load_checkpoint(run / "last.pt")
    assert 1 <= checkpoint["epoch"] < 6

    resumed = train(
        tiny_config(tmp_path, folder, epochs=6, plots=False, tensorboard=False, resume=str(run / "last.pt")),
        tmp_path / "ignored",
    )
    assert resumed["epochs"] == 6
    assert [r["epoch"] for r in load_checkpoint(run / "last.pt")["history"]] == [1, 2, 3, 4, 5, 6]


def test_torchrun_two_processes_matches_single_process(folder: Path, tmp_path: Path) -> None:
    """DDP over gloo on the CPU: same global batch and data, so the loss matches a single process (the ranks'
    weights are checked equal every epoch: without the gradient all-reduce the run stops)."""
    options = {
        "epochs": 2,
        "plots": False,
        "tensorboard": False,
        "recipe.mixup": 0.0,
        "model.drop_rate": 0.0,
        "model.dropout": 0.0,
        "recipe.ema_decay": 0.0,
        "data.batch_size": 8,
    }
    single = train(tiny_config(tmp_path, folder, **options), tmp_path / "single")
    config = tiny_config(tmp_path, folder, **options)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            "train.py",
            *as_overrides(config),
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("data: ") == result.stderr.count("memory: ") == 1, "rank 0 alone tells the progress"
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp["train_images"] == single["train_images"]
    single_log = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    ddp_log = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(ddp_log) == len(single_log) == 2
    for a, b in zip(single_log, ddp_log, strict=True):
        # Only BatchNorm differs: each rank normalises its half of the batch.
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
    # Rank 0 alone writes: one checkpoint, one log.
    assert (tmp_path / "ddp" / "last.pt").is_file()


def test_real_flowers_subset_loss_falls(flowers_root: Path, tmp_path: Path) -> None:
    subset = tmp_path / "flowers"
    for class_dir in sorted(p for p in flowers_root.iterdir() if p.is_dir()):
        (subset / class_dir.name).mkdir(parents=True)
        for photo in sorted(p for p in class_dir.iterdir() if p.is_file())[:40]:
            (subset / class_dir.name / photo.name).symlink_to(photo)
    config = tiny_config(
        tmp_path,
        subset,
        epochs=4,
        plots=False,
        **{"data.batch_size": 16, "recipe.mixup": 0.0, "data.val_fraction": 0.1},
    )
    train(config, tmp_path / "run")
    losses = [json.loads(x)["train_loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0], losses


def test_multirun_one_run_per_model(folder: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path, folder, epochs=1, plots=False, tensorboard=False, max_steps_per_epoch=1)
    overrides = [o for o in as_overrides(config) if not o.startswith("model.name=")]
    result = subprocess.run([sys.executable, "train.py", "-m", "model=xxs,xs", *overrides,
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    names = sorted(load_checkpoint(p)["model_name"] for p in (tmp_path / "sweep").glob("*/last.pt"))
    assert names == ["mobilevit_xs", "mobilevit_xxs"]
    assert "multirun: 2 job(s), settings checked" in result.stderr
    assert "#1 : " not in result.stderr, "Hydra's own launch lines stay off"
    for number, model in enumerate(["xxs", "xs"]):  # which job is running, and where its files go
        assert f"multirun job #{number}: model={model} " in result.stderr
        assert f"-> {tmp_path / 'sweep' / f'{number}_mobilevit_{model}'}\n" in result.stderr


def test_multirun_checks_every_job_before_the_first_starts(folder: Path, tmp_path: Path) -> None:
    args = ["-m", "model=xxs", "data.batch_size=8,0", "data=imagefolder", f"data.root={folder}", "device=cpu",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    result = run_train(*args, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().startswith("error: data.batch_size must be positive, got 0 (in the job model=xxs")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "sweep").exists(), "no job ran"


@pytest.fixture(scope="module")
def stopped_run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train.py run of 2 epochs (one step each) stopped after the first: a resumable last.pt."""
    tmp = tmp_path_factory.mktemp("stopped")
    config = tiny_config(tmp, folder, epochs=2, max_steps_per_epoch=1, stop_after=1, plots=False, tensorboard=False)
    result = run_train(*as_overrides(config), f"hydra.run.dir={tmp / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp / "run"


def test_resume_continues_with_the_checkpoints_settings(stopped_run: Path, tmp_path: Path) -> None:
    """Only what the command line sets changes (each change named); the checkpoint's folder is the run's."""
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    result = run_train(f"resume={run / 'last.pt'}", "epochs=3", f"hydra.run.dir={tmp_path / 'hydra'}")
    assert result.returncode == 0, result.stderr[-2000:]
    changes = [line for line in result.stderr.splitlines() if line.startswith("resume: ")]
    assert changes == ["resume: epochs 2 -> 3 (overrides the checkpoint's setting)"]
    config = json.loads((run / "config.json").read_text())
    assert (config["epochs"], config["data"]["img_size"], config["data"]["batch_size"]) == (3, 64, 8)
    assert config["stop_after"] == 0, "stop_after is per invocation, not inherited"
    assert [r["epoch"] for r in load_checkpoint(run / "last.pt")["history"]] == [1, 2, 3]
    assert not (tmp_path / "hydra").exists(), "the folder Hydra made for the resume is removed"

    files = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    assert "- stop_after=1" in (run / ".hydra" / "overrides.yaml").read_text(), "the first command's record"
    again = run_train(f"resume={run / 'last.pt'}", f"hydra.run.dir={run}")  # Hydra pointed at the run itself
    assert again.returncode == 0 and "already finished 3 epoch(s)" in again.stderr, again.stderr[-2000:]
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == files

    overrides = as_overrides(config_from_dict(config))
    fresh = run_train(*[o for o in overrides if not o.startswith("resume=")], f"hydra.run.dir={run}", timeout=60)
    assert fresh.returncode == 2 and f"run directory {run} already holds a run" in fresh.stderr, fresh.stderr
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == files, "the record included"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("recipe=keras", "resume: recipe.optimizer cannot change when resuming ('adamw' in the checkpoint, 'adam'"),
        ("model=xs", "resume: model.name cannot change when resuming"),
    ],
)
def test_resume_refuses_what_it_cannot_change(stopped_run: Path, tmp_path: Path, override: str, message: str) -> None:
    result = run_train(f"resume={stopped_run / 'last.pt'}", override, f"hydra.run.dir={tmp_path / 'hydra'}", timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "hydra").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("best.pt", "best.pt is a best.pt (weights only, no training state); resume from last.pt in the same folder"),
        ("split.json", "split.json as a mobilevit-torch training checkpoint (not a PyTorch checkpoint file"),
    ],
)
def test_resume_from_a_wrong_file_is_one_line(stopped_run: Path, tmp_path: Path, name: str, message: str) -> None:
    result = run_train(f"resume={stopped_run / name}", f"hydra.run.dir={tmp_path / 'hydra'}", timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
