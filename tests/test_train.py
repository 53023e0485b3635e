"""Training end to end on generated folders (CPU): outputs, odd files, resume, NaN stop, checkpoints."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from mobilevit_torch import create_model
from mobilevit_torch.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mobilevit_torch.data.folder import DataError
from mobilevit_torch.data.sampler import MultiScaleBatchSampler
from mobilevit_torch.preprocessing import Preprocessing
from mobilevit_torch.training import schedule
from mobilevit_torch.training.config import ConfigError, RecipeConfig
from mobilevit_torch.training.data_setup import check_batch_size
from mobilevit_torch.training.loop import train
from mobilevit_torch.training.pipeline import CachedTrainBatches, Shard
from mobilevit_torch.training.stopping import TrainingDiverged, TrainingInterrupted, diverged_message
from tests.train_helpers import CLASSES, make_folder, tiny_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("photos"))


def same_weights(full_dir: Path, resumed_dir: Path) -> tuple[dict, dict]:
    """Both runs' last.pt, after checking their weights (and EMA weights) are equal bit for bit."""
    full, resumed = load_checkpoint(full_dir / "last.pt"), load_checkpoint(resumed_dir / "last.pt")
    assert resumed["epoch"] == full["epoch"]
    pairs = [(full["state_dict"], resumed["state_dict"])]
    if full.get("ema"):
        pairs.append((full["ema"]["module"], resumed["ema"]["module"]))
    for expected, got in pairs:
        for key, value in expected.items():
            assert torch.equal(value, got[key]), key
    return full, resumed


def test_end_to_end_outputs_and_odd_files(folder: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    summary = train(tiny_config(tmp_path, folder), run)
    assert "decoding" not in capfd.readouterr().err, "progress=false silences the decode bars too"

    for name in (
        "last.pt",
        "best.pt",
        "metrics.csv",
        "metrics.jsonl",
        "split.json",
        "summary.json",
        "curves.png",
        "confusion_matrix.png",
        "config.json",
        "train.log",
    ):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    # Two undecodable files skipped and counted; the five odd-but-valid images kept.
    skipped = {Path(p).name for p, _ in summary["skipped_files"]}
    assert skipped == {"notes.jpg", "empty.jpg"}
    assert summary["train_images"] + summary["val_images"] == 3 * 8 + 5
    assert summary["epochs"] == 2 and 0.0 <= summary["last_val_acc"] <= 1.0
    assert set(summary["per_class_accuracy"]) == set(CLASSES)

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc", "lr", "images_per_s", "epoch_time_s"):
        assert key in records[0]

    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["class_names"] == list(CLASSES)
    assert checkpoint["model_name"] == "mobilevit_xxs" and checkpoint["epoch"] == 2
    for key in ("optimizer", "scaler", "ema", "rng", "config", "preprocessing"):
        assert checkpoint[key] is not None, key
    model = create_model("mobilevit_xxs", pretrained=run / "best.pt")
    assert model.class_names == list(CLASSES) and model.preprocessing.input_size == 64
    assert not list(run.glob(".*.tmp")), "atomic writes leave no temporary files"


def test_split_is_deterministic_and_saved(folder: Path, tmp_path: Path) -> None:
    a = train(tiny_config(tmp_path, folder, epochs=1, plots=False), tmp_path / "a")
    b = train(tiny_config(tmp_path, folder, epochs=1, plots=False), tmp_path / "b")
    split_a = json.loads((tmp_path / "a" / "split.json").read_text())
    assert split_a == json.loads((tmp_path / "b" / "split.json").read_text())
    assert a["val_images"] == b["val_images"]


@pytest.mark.parametrize(("cache", "workers"), [(True, 1), (False, 0), (False, 2)])
def test_resume_matches_uninterrupted_run(folder: Path, tmp_path: Path, cache: bool, workers: int) -> None:
    """Stopped after epoch 1 and resumed: the same final weights, bit for bit (on the DataLoader path
    too, whose workers start again on resume: each image's augmentation has its own seed)."""
    options = {
        "epochs": 3,
        "plots": False,
        "tensorboard": False,
        "data.cache": cache,
        "data.num_workers": workers,
    }
    train(tiny_config(tmp_path, folder, **options), tmp_path / "full")
    train(tiny_config(tmp_path, folder, stop_after=1, **options), tmp_path / "part")
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    train(tiny_config(tmp_path, folder, resume=str(tmp_path / "part" / "last.pt"), **options), tmp_path / "ignored")

    _, resumed = same_weights(tmp_path / "full", tmp_path / "part")
    assert resumed["epoch"] == 3
    history = [r["epoch"] for r in resumed["history"]]
    assert history == [1, 2, 3]


def test_resume_keeps_the_best_epoch_so_far(folder: Path, tmp_path: Path) -> None:
    """The best accuracy before the stop still counts after it: a resumed epoch that does worse neither becomes
    "best" nor overwrites best.pt (here the stored best is made unbeatable, 100 %)."""
    options = {"epochs": 3, "max_steps_per_epoch": 2, "plots": False, "tensorboard": False}
    train(tiny_config(tmp_path, folder, stop_after=1, **options), tmp_path / "part")
    last = load_checkpoint(tmp_path / "part" / "last.pt")
    last["best"] = {"val_acc": 1.0, "epoch": 1, "weights": "model"}
    save_checkpoint(tmp_path / "part" / "last.pt", last)
    best_before = (tmp_path / "part" / "best.pt").read_bytes()

    summary = train(tiny_config(tmp_path, folder, resume=str(tmp_path / "part" / "last.pt"), **options), tmp_path)
    assert (summary["epochs"], summary["best_epoch"], summary["best_val_acc"]) == (3, 1, 1.0)
    assert (tmp_path / "part" / "best.pt").read_bytes() == best_before


def test_resume_from_a_last_pt_copied_elsewhere_keeps_the_whole_record(folder: Path, tmp_path: Path) -> None:
    """last.pt copied alone into a new folder and resumed there: the metrics files and summary.json
    hold every epoch (from the checkpoint's history), and the summary keeps its confusion matrix."""
    options = {"epochs": 3, "max_steps_per_epoch": 2, "plots": False, "tensorboard": False}
    train(tiny_config(tmp_path, folder, stop_after=2, **options), tmp_path / "part")
    (tmp_path / "moved").mkdir()
    shutil.copy(tmp_path / "part" / "last.pt", tmp_path / "moved" / "last.pt")

    summary = train(tiny_config(tmp_path, folder, resume=str(tmp_path / "moved" / "last.pt"), **options), tmp_path)
    assert summary["epochs"] == 3
    lines = (tmp_path / "moved" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert len((tmp_path / "moved" / "metrics.csv").read_text().splitlines()) == 1 + 3
    written = json.loads((tmp_path / "moved" / "summary.json").read_text())
    assert written["epochs"] == 3 and len(written["confusion_matrix"]) == len(CLASSES)
    assert sum(map(sum, written["confusion_matrix"])) == summary["val_images"]


def test_drop_path_rate_reaches_the_model_and_resumes_exactly(folder: Path, tmp_path: Path) -> None:
    """model.drop_path_rate is passed to create_model (and stored for rebuilding); its per-sample draws
    replay on resume like dropout's."""
    options = {"epochs": 2, "plots": False, "tensorboard": False, "max_steps_per_epoch": 2, "model.drop_path_rate": 0.2}
    train(tiny_config(tmp_path, folder, **options), tmp_path / "full")
    train(tiny_config(tmp_path, folder, stop_after=1, **options), tmp_path / "part")
    train(tiny_config(tmp_path, folder, resume=str(tmp_path / "part" / "last.pt"), **options), tmp_path / "ignored")

    full, _ = same_weights(tmp_path / "full", tmp_path / "part")
    assert full["model_args"]["drop_path_rate"] == 0.2
    assert create_model("mobilevit_xxs", pretrained=tmp_path / "full" / "best.pt").model_args["drop_path_rate"] == 0.2


def test_resume_after_an_interrupt_in_the_last_step_of_an_epoch(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during an epoch's last step: the checkpoint says "all steps done"; resuming runs no
    step of that epoch, only its validation and record, then the remaining epochs."""
    import mobilevit_torch.training.optimizer as optimizer

    options = {"epochs": 2, "max_steps_per_epoch": 2, "plots": False, "tensorboard": False}
    fired = []

    def learning_rate(update: int, **kwargs: object) -> float:
        if update == 1 and not fired:  # epoch 1's second (last) update is about to run
            fired.append(update)
            os.kill(os.getpid(), signal.SIGTERM)
        return schedule.learning_rate(update, **kwargs)

    monkeypatch.setattr(optimizer, "learning_rate", learning_rate)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="interrupted at epoch 1, step 2"):
        train(tiny_config(tmp_path, folder, **options), run)
    assert load_checkpoint(run / "last.pt")["step_in_epoch"] == 2

    summary = train(tiny_config(tmp_path, folder, resume=str(run / "last.pt"), **options), tmp_path / "ignored")
    assert summary["epochs"] == 2
    history = load_checkpoint(run / "last.pt")["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    recipe = tiny_config(tmp_path, folder, **options).recipe  # 2 epochs of 2 updates
    last_update_lr = schedule.learning_rate(
        1,
        base_lr=recipe.lr,
        total_steps=4,
        warmup_steps=round(recipe.warmup_epochs * 2),
        min_lr=recipe.min_lr,
        schedule=recipe.schedule,
    )
    assert history[0]["lr"] == last_update_lr
    assert history[0]["images_per_s"] == 0, "no step of epoch 1 ran after the resume"
    assert history[1]["images_per_s"] > 0


@pytest.mark.parametrize("cache", [True, False])
def test_an_interrupt_mid_epoch_resumes_bit_for_bit(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: bool
) -> None:
    """SIGTERM in the middle of an epoch, then resume: the same weights as a run never stopped. The
    resumed epoch skips the batches it had trained (without making them) and draws the rest, and
    its dropout, as the uninterrupted run did."""
    import mobilevit_torch.training.optimizer as optimizer

    # Batch 4: 5 steps an epoch, so the stop after step 2 leaves 3 for the resumed run to train.
    options = {"epochs": 2, "plots": False, "tensorboard": False, "data.cache": cache, "data.num_workers": 2,
               "data.batch_size": 4}  # fmt: skip
    train(tiny_config(tmp_path, folder, **options), tmp_path / "full")
    fired = []

    def learning_rate(update: int, **kwargs: object) -> float:
        if update == 1 and not fired:  # epoch 1's second update: stop after it
            fired.append(update)
            os.kill(os.getpid(), signal.SIGTERM)
        return schedule.learning_rate(update, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(optimizer, "learning_rate", learning_rate)
        with pytest.raises(TrainingInterrupted, match="interrupted at epoch 1, step 2"):
            train(tiny_config(tmp_path, folder, **options), tmp_path / "part")
    stopped = load_checkpoint(tmp_path / "part" / "last.pt")
    assert (stopped["epoch"], stopped["step_in_epoch"]) == (0, 2)  # in the middle of epoch 1 of 5 steps
    train(tiny_config(tmp_path, folder, resume=str(tmp_path / "part" / "last.pt"), **options), tmp_path / "ignored")

    full, resumed = same_weights(tmp_path / "full", tmp_path / "part")
    assert resumed["epoch"] == 2
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in full["history"]]


def test_randaugment_trains_on_the_dataloader_path(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """recipe.randaugment=true (with data.cache=false, which the config asks for): every training image of the run
    goes through RandAugment (counted in the loader's own process: no workers)."""
    from torchvision.transforms import v2 as T

    options = {"recipe.randaugment": True, "data.cache": False, "data.num_workers": 0, "epochs": 1,
               "max_steps_per_epoch": 2, "plots": False, "tensorboard": False}  # fmt: skip
    config = tiny_config(tmp_path, folder, **options)
    calls = []
    forward = T.RandAugment.forward
    monkeypatch.setattr(T.RandAugment, "forward", lambda self, *inputs: calls.append(1) or forward(self, *inputs))
    summary = train(config, tmp_path / "run")
    assert summary["epochs"] == 1 and math.isfinite(summary["last_val_acc"])
    assert len(calls) >= 2 * config.data.batch_size  # two steps' images; validation's are not augmented


def test_nan_loss_stops_and_keeps_last_good_checkpoint(folder: Path, tmp_path: Path) -> None:
    options = {"epochs": 4, "plots": False, "tensorboard": False, "recipe.clip_grad": 0.0}
    train(tiny_config(tmp_path, folder, stop_after=1, **options), tmp_path / "run")
    last = tmp_path / "run" / "last.pt"
    before = last.read_bytes()
    bad = tiny_config(tmp_path, folder, resume=str(last), **{**options, "recipe.lr": 1e30, "recipe.warmup_epochs": 0})
    diverged = r"loss became (nan|inf).*last good checkpoint.*or set recipe.clip_grad=1\.0\.$"
    with pytest.raises(TrainingDiverged, match=diverged):
        train(bad, tmp_path / "ignored")
    assert last.read_bytes() == before
    # With clipping on (the default recipe), the hint is a smaller clip, not the one already set.
    assert diverged_message(0, 0, math.nan, tmp_path / "run", 1.0).endswith("or a recipe.clip_grad below 1.")


def test_clear_errors_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.root"):
        tiny_config(tmp_path, tmp_path / "missing").check_paths()
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image"):
        train(tiny_config(tmp_path, empty), tmp_path / "run")
    with pytest.raises(ConfigError, match="resume"):
        tiny_config(tmp_path, empty, resume=str(tmp_path / "nope.pt")).check_paths()
    with pytest.raises(ConfigError, match="multiple of 32"):
        tiny_config(tmp_path, empty, **{"data.img_size": 100})


@pytest.mark.parametrize("cache", [True, False])
def test_too_few_training_images_for_a_batch_is_a_config_error(folder: Path, tmp_path: Path, cache: bool) -> None:
    """Both data paths refuse a batch larger than the readable training set in data.batch_size's terms
    (not with a ValueError from deep inside the pipeline)."""
    options = {"data.batch_size": 64, "data.cache": cache, "data.num_workers": 0}
    with pytest.raises(ConfigError, match=r"training images, fewer than data.batch_size=64: lower data.batch_size"):
        train(tiny_config(tmp_path, folder, **options), tmp_path / "run")
    with pytest.raises(ConfigError, match="data.batch_size=64 is not divisible by the 3 training processes"):
        check_batch_size(1000, 64, 3)
    check_batch_size(64, 64, 2)


def test_resume_refuses_another_model(folder: Path, tmp_path: Path) -> None:
    train(tiny_config(tmp_path, folder, epochs=2, stop_after=1, plots=False), tmp_path / "run")
    config = tiny_config(tmp_path, folder, resume=str(tmp_path / "run" / "last.pt"), **{"model.name": "mobilevit_xs"})
    with pytest.raises(ConfigError, match="mobilevit_xxs"):
        train(config, tmp_path / "other")


def test_a_whole_image_box_is_the_image_and_a_flip_mirrors_it() -> None:
    """Cached path's augmentation: sampling the full box at the cache's size gives the pixels back (normalised,
    BGR), and a flip mirrors them left to right."""
    from mobilevit_torch.training.augment import crop_and_flip, normalize

    pre = Preprocessing(input_size=8, channel_order="BGR", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)  # centre (0, 0), half-extents 1: the whole image
    out = crop_and_flip(images, full, torch.tensor([True, False]), out_size=8, pre=pre)
    expected = normalize(torch.stack([images[0].flip(-1), images[1]]).float(), pre)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out[0], normalize(images[:1].float(), pre)[0])


def test_keras_crop_covers_the_same_share_of_the_image_at_every_scale() -> None:
    """Cached path: the random crop is img_size pixels of the resized cache whatever size it is resampled to."""
    recipe = RecipeConfig(augment="keras", crop_pct=64 / 70, mixup=0.0)
    pre = Preprocessing(input_size=64)
    images = torch.zeros(200, 3, 70, 70, dtype=torch.uint8)
    source = CachedTrainBatches(
        images, torch.zeros(200, dtype=torch.long), batch_size=4, img_size=64, pre=pre, recipe=recipe, seed=0,
        sizes=[32, 64, 96],
    )  # fmt: skip
    plan = source._plan(0)
    assert {size for _, size, _, _ in plan} == {32, 64, 96}
    for _, _, boxes, _ in plan:
        assert torch.allclose(boxes[:, 2:], torch.tensor(64 / 70))  # half-extent in normalised coordinates


@pytest.mark.parametrize(("world_size", "batch"), [(1, 13), (2, 14)])
def test_both_data_paths_scale_multiscale_batches_alike(world_size: int, batch: int) -> None:
    """The cached path's whole batch at each size is the DataLoader path's per-rank batch times the ranks,
    and, like the sampler, it drops fewer images at the end of an epoch than its smallest batch."""
    recipe, pre, sizes = RecipeConfig(mixup=0.0), Preprocessing(input_size=64), [32, 64, 96]
    images, labels = torch.zeros(203, 3, 8, 8, dtype=torch.uint8), torch.zeros(203, dtype=torch.long)
    cached = CachedTrainBatches(
        images, labels, batch_size=batch, img_size=64, pre=pre, recipe=recipe, seed=0, shard=Shard(0, world_size),
        sizes=sizes,
    )  # fmt: skip
    for rank in range(world_size):
        per_rank = batch // world_size
        sampler = MultiScaleBatchSampler(
            203, base_size=64, base_batch_size=per_rank, sizes=sizes, seed=0, rank=rank, world_size=world_size
        )
        for epoch in range(3):
            plan = cached._plan(epoch)
            drawn = {size: len(indices) for indices, size, _, _ in plan}
            assert set(drawn) == set(sizes)
            assert drawn == {size: world_size * sampler.batch_size_for(size) for size in sizes}
            assert 203 - sum(len(indices) for indices, _, _, _ in plan) < min(drawn.values())
    assert sampler.batch_size_for(96) == {1: 5, 2: 3}[world_size]  # floor(batch / ranks * (64 / 96)**2): odd


def test_keras_recipe_and_multiscale_run(folder: Path, tmp_path: Path) -> None:
    keras = {
        "recipe.optimizer": "adam",
        "recipe.schedule": "constant",
        "recipe.augment": "keras",
        "recipe.resize": 70,
        "recipe.ema_decay": 0.0,
        "recipe.mixup": 0.0,
        "epochs": 1,
        "plots": False,
    }
    assert train(tiny_config(tmp_path, folder, **keras), tmp_path / "keras")["epochs"] == 1
    # Batch 4 (16 at 32 px): every size's area-scaled batch fits the ~24 training images.
    multiscale = {"data.multiscale": True, "data.multiscale_sizes": [32, 64, 96], "epochs": 1, "plots": False}
    assert train(tiny_config(tmp_path, folder, **multiscale, **{"data.batch_size": 4}), tmp_path / "ms")["epochs"] == 1


@pytest.mark.parametrize("cache", [True, False])
def test_multiscale_batch_larger_than_the_training_set_says_so(folder: Path, tmp_path: Path, cache: bool) -> None:
    """At 32 px a batch of 8 at 64 px becomes 32 images, more than the training set: the message says that
    (it used to be "recipe.accum_steps=1 is more than the 0 steps of an epoch")."""
    options = {"data.multiscale": True, "data.multiscale_sizes": [32], "data.cache": cache, "data.num_workers": 0}
    with pytest.raises(ConfigError, match=r"at 32 px the batch is scaled to 32 images .* readable training images"):
        train(tiny_config(tmp_path, folder, **options), tmp_path / "run")


def test_gradient_accumulation_updates_once_per_accum_batches(folder: Path, tmp_path: Path) -> None:
    """accum_steps=2 over batches of 4 makes one optimizer update per two batches: as many as batches of 8 (that the
    update is the big batch's: tests/test_train_step.py)."""
    options = {"epochs": 1, "plots": False, "tensorboard": False, "recipe.mixup": 0.0, "recipe.ema_decay": 0.0}
    train(tiny_config(tmp_path, folder, **{**options, "data.batch_size": 4, "recipe.accum_steps": 2}), tmp_path / "a")
    steps = load_checkpoint(tmp_path / "a" / "last.pt")["optimizer"]["state"][0]["step"]
    train(tiny_config(tmp_path, folder, **{**options, "data.batch_size": 8}), tmp_path / "b")
    assert steps == load_checkpoint(tmp_path / "b" / "last.pt")["optimizer"]["state"][0]["step"]


def test_each_run_logs_only_into_its_own_train_log(folder: Path, tmp_path: Path) -> None:
    train(tiny_config(tmp_path, folder, epochs=1, plots=False, tensorboard=False), tmp_path / "first")
    size = (tmp_path / "first" / "train.log").stat().st_size
    train(tiny_config(tmp_path, folder, epochs=1, plots=False, tensorboard=False), tmp_path / "second")
    assert (tmp_path / "first" / "train.log").stat().st_size == size
    assert "epoch 1/1" in (tmp_path / "second" / "train.log").read_text()


def one_photo_per_class(root: Path) -> Path:
    make_folder(root, per_class=1, odd_files=False)
    return root


@pytest.mark.parametrize("cache", [True, False])
def test_no_validation_images_is_refused_before_decoding(
    tmp_path: Path, cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One photo per class leaves nothing for validation: one line before any decoding (it used to "succeed" with
    val acc 0.0 % without the cache, and fail with "no samples to decode" after decoding with it)."""
    from mobilevit_torch.training import data_setup

    monkeypatch.setattr(data_setup, "decode_images", lambda *a, **k: pytest.fail("decoded before refusing"))
    root = one_photo_per_class(tmp_path / "photos")
    with pytest.raises(DataError, match=r"no validation images: .*each class needs at least 2 photos .*provide val/"):
        train(tiny_config(tmp_path, root, **{"data.cache": cache}), tmp_path / "run")


def test_one_class_is_refused(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", odd_files=False)
    for name in CLASSES[1:]:
        for file in (root / name).iterdir():
            file.unlink()
        (root / name).rmdir()
    with pytest.raises(DataError, match=r"only one class \(cat\) .*a classifier needs at least 2 classes"):
        train(tiny_config(tmp_path, root), tmp_path / "run")


def test_class_without_validation_images_is_null_in_summary(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A class too small to get a validation photo is warned about, and its per-class accuracy is null in
    summary.json (not NaN, which is not JSON)."""
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(folder, root)
    (root / "owl").mkdir()
    shutil.copy(root / "cat" / "0.jpg", root / "owl" / "0.jpg")
    with caplog.at_level("WARNING", logger="mobilevit_torch"):
        summary = train(tiny_config(tmp_path, root, epochs=1, plots=False, tensorboard=False), tmp_path / "run")
    assert "class 'owl' has no validation images" in caplog.text
    assert summary["per_class_accuracy"]["owl"] is None
    text = (tmp_path / "run" / "summary.json").read_text()
    stored = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in summary.json"))
    assert stored["per_class_accuracy"]["owl"] is None and stored["per_class_accuracy"]["cat"] is not None


@pytest.mark.parametrize(("rate", "shown"), [(0.4321, "0.432"), (7.25, "7.25"), (23.46, "23.5"), (4412.3, "4412")])
def test_epoch_line_shows_slow_rates(rate: float, shown: str) -> None:
    """A short CPU epoch trains well under one image per second: not "0 img/s"."""
    from mobilevit_torch.training.run_log import epoch_line

    record = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 1e-3}
    line = epoch_line({**record, "images_per_s": rate, "epoch_time_s": 3.0}, 2)
    assert f"| {shown} img/s |" in line, line


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("text.pt", r"cannot read .*text\.pt .*not a PyTorch checkpoint file"),
        ("truncated.pt", r"cannot read .*truncated\.pt .*another format, or truncated"),
        ("state_dict.pt", r"state_dict\.pt is not a mobilevit-torch training checkpoint"),
        ("best.pt", r"best\.pt is a best\.pt \(weights only, no training state\); resume from last\.pt"),
    ],
)
def test_resume_from_a_file_that_is_no_training_checkpoint_is_one_error(
    folder: Path, tmp_path: Path, name: str, message: str
) -> None:
    run = tmp_path / "run"
    train(tiny_config(tmp_path, folder, epochs=1, max_steps_per_epoch=1, plots=False, tensorboard=False), run)
    bad = {
        "text.pt": lambda path: path.write_text("hello"),
        "truncated.pt": lambda path: path.write_bytes((run / "last.pt").read_bytes()[:50_000]),
        "state_dict.pt": lambda path: torch.save(load_checkpoint(run / "last.pt")["state_dict"], path),
        "best.pt": lambda path: None,
    }
    path = run / name
    bad[name](path)
    with pytest.raises(CheckpointError, match=message):
        train(tiny_config(tmp_path, folder, resume=str(path)), tmp_path / "ignored")


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    options = {"epochs": 1, "max_steps_per_epoch": 1, "plots": False, "tensorboard": False}
    train(tiny_config(tmp_path, folder, **options), run)
    files = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    with pytest.raises(ConfigError, match=f"run directory {run} already holds a run; resume it with resume="):
        train(tiny_config(tmp_path, folder, **options), run)
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == files


def test_a_fresh_run_makes_its_own_split_over_a_stale_split_json(folder: Path, tmp_path: Path) -> None:
    options = {"epochs": 1, "max_steps_per_epoch": 1, "plots": False, "tensorboard": False}
    train(tiny_config(tmp_path, folder, **options), tmp_path / "old")
    two_classes = tmp_path / "two"
    shutil.copytree(folder, two_classes, ignore=shutil.ignore_patterns("fox"))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tmp_path / "old" / "split.json", run / "split.json")  # another folder's split, nothing else
    train(tiny_config(tmp_path, two_classes, **options), run)
    assert load_checkpoint(run / "last.pt")["class_names"] == ["cat", "dog"]
    assert str(two_classes) in (run / "split.json").read_text()


def test_resuming_a_finished_run_leaves_it_untouched(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mobilevit_torch.training.loop as loop

    run = tmp_path / "run"
    options = {"epochs": 1, "max_steps_per_epoch": 1, "plots": False}
    train(tiny_config(tmp_path, folder, **options), run)
    files = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run needs no data")

    monkeypatch.setattr(loop, "prepare_split", no_data)
    with caplog.at_level("WARNING", logger="mobilevit_torch"):
        summary = train(tiny_config(tmp_path, folder, resume=str(run / "last.pt"), **options), tmp_path / "ignored")
    assert "already finished 1 epoch(s) (epochs=1): nothing to train; pass epochs=N with N > 1" in caplog.text
    assert summary == json.loads((run / "summary.json").read_text())
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == files
    assert not (tmp_path / "ignored").exists()


def test_resume_names_and_applies_each_changed_setting(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = {"epochs": 2, "max_steps_per_epoch": 1, "plots": False, "tensorboard": False}
    train(tiny_config(tmp_path, folder, stop_after=1, **options), tmp_path / "run")
    last = str(tmp_path / "run" / "last.pt")
    changed = tiny_config(tmp_path, folder, resume=last, **{**options, "epochs": 3, "recipe.weight_decay": 0.01})
    with caplog.at_level("WARNING", logger="mobilevit_torch"):
        train(changed, tmp_path / "ignored")
    lines = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("resume: "))
    assert lines == [
        "resume: epochs 2 -> 3 (overrides the checkpoint's setting)",
        "resume: recipe.weight_decay 0.05 -> 0.01 (overrides the checkpoint's setting)",
    ]
    checkpoint = load_checkpoint(last)
    assert checkpoint["epoch"] == 3 and checkpoint["config"]["epochs"] == 3
    assert checkpoint["optimizer"]["param_groups"][0]["weight_decay"] == 0.01, "not the checkpoint's 0.05"


def test_resume_refuses_settings_the_checkpoint_fixes(folder: Path, tmp_path: Path) -> None:
    options = {"epochs": 2, "max_steps_per_epoch": 2, "plots": False, "tensorboard": False, "stop_after": 1}
    train(tiny_config(tmp_path, folder, **options), tmp_path / "run")
    for key, value in {"recipe.optimizer": "adam", "recipe.accum_steps": 2, "data.val_fraction": 0.5}.items():
        changed = tiny_config(tmp_path, folder, resume=str(tmp_path / "run" / "last.pt"), **{**options, key: value})
        with pytest.raises(ConfigError, match=rf"^resume: {key} cannot change when resuming \("):
            train(changed, tmp_path / "ignored")


def test_a_stop_signal_in_a_forked_worker_is_left_to_the_main_process() -> None:
    """Ctrl-C reaches the DataLoader workers too; only the process that installed the handler warns
    and stops, so the "saving after this step" line is printed once, not once per worker."""
    from mobilevit_torch.training.stopping import StopSignal

    stop = StopSignal()
    try:
        child = os.fork()
        if child == 0:  # a worker: the inherited handler must ignore the signal
            os.kill(os.getpid(), signal.SIGINT)
            os._exit(0 if stop.signum is None else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the forked process took the signal as its own stop"
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
    finally:
        stop.restore()
