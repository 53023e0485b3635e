"""evaluate_folder / predict_images / load_model_from_checkpoint and the evaluate.py / predict.py commands,
on a tiny generated image folder and a 64 px XXS checkpoint."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
from PIL import Image

from mobilevit_torch import create_model
from mobilevit_torch.checkpoint import model_payload, save_checkpoint
from mobilevit_torch.data.folder import DataError
from mobilevit_torch.data.images import BadImageError
from mobilevit_torch.data.transforms import eval_transform
from mobilevit_torch.evaluation import (
    EvalResult,
    EvaluationError,
    evaluate_folder,
    load_model_from_checkpoint,
    predict_images,
    resolve_device,
)
from mobilevit_torch.models import fuse_for_inference, is_fused
from tests.conftest import REPO

# Not in sorted order: labels must follow the model's list, not the folder listing.
MODEL_CLASSES = ["tulip", "daisy", "rose"]
# Different counts per class, so a by-position mix-up changes the confusion matrix rows.
FOLDER_COUNTS = {"daisy": 2, "rose": 3, "tulip": 4}


def _write_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """Noisy flat-colour images, 80x48 (neither square nor 64 px), alternating JPEG and PNG."""
    g = torch.Generator().manual_seed(seed)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            colour = torch.rand(1, 1, 3, generator=g)
            pixels = ((colour * 0.8 + torch.rand(48, 80, 3, generator=g) * 0.2) * 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{name}_{i}{'.png' if i % 2 else '.jpg'}")
    return root


def _make_model(class_names: list[str], fit_to: Path) -> torch.nn.Module:
    """A 64 px XXS whose predictions vary across the images in ``fit_to``.

    A randomly initialised network gives nearly the same pooled features for every image, so it
    would predict one class throughout and hide label mix-ups. The classifier is set to a random
    projection of the standardised features of ``fit_to``'s images instead.
    """
    model = create_model("mobilevit_xxs", num_classes=len(class_names)).eval()
    model.preprocessing = model.preprocessing.with_input_size(64)
    model.class_names = list(class_names)
    transform = eval_transform(model.preprocessing)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in sorted(fit_to.rglob("*.*"))])
    features: list[torch.Tensor] = []
    hook = model.classifier.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    with torch.no_grad():
        model(images)
        hook.remove()
        mean, std = features[0].mean(0), features[0].std(0) + 1e-6
        weight = torch.randn(len(class_names), mean.numel()) / std / mean.numel() ** 0.5
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(-weight @ mean)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("eval")
    folder = _write_folder(base / "photos", FOLDER_COUNTS)
    model = _make_model(MODEL_CLASSES, folder)
    checkpoint = save_checkpoint(base / "run" / "best.pt", {**model_payload(model, MODEL_CLASSES), "epoch": 0})
    return {"base": base, "folder": folder, "model": model, "checkpoint": checkpoint}


def _direct_confusion(model: torch.nn.Module, folder: Path) -> tuple[list[list[int]], torch.Tensor, list[int]]:
    """The reference: every image opened with PIL, transformed, classified one by one."""
    names = model.class_names
    transform = eval_transform(model.preprocessing)
    cm = [[0] * len(names) for _ in names]
    logits, labels = [], []
    with torch.no_grad():
        for path in sorted(folder.rglob("*.*")):
            label = names.index(path.parent.name)
            with Image.open(path) as image:
                x = transform(image.convert("RGB")).unsqueeze(0)
            out = model(x)[0]
            cm[label][int(out.argmax())] += 1
            logits.append(out)
            labels.append(label)
    return cm, torch.stack(logits), labels


def test_evaluate_folder_matches_direct_logits(setup: dict) -> None:
    model = load_model_from_checkpoint(setup["checkpoint"])
    assert model.class_names == MODEL_CLASSES
    assert model.preprocessing.input_size == 64
    assert not model.training

    result = evaluate_folder(model, setup["folder"], batch_size=4, num_workers=0, progress=False)

    expected_cm, _, _ = _direct_confusion(setup["model"], setup["folder"])
    assert result.confusion.tolist() == expected_cm
    assert [sum(row) for row in expected_cm] == [4, 2, 3]  # rows follow the model's class order
    assert sum(any(row[c] for row in expected_cm) for c in range(3)) > 1, "the model predicts one class only"
    assert result.class_names == MODEL_CLASSES
    assert result.num_images == 9 and result.skipped == []
    assert result.accuracy == pytest.approx(sum(expected_cm[i][i] for i in range(3)) / 9)
    assert result.top5 is None
    assert list(result.per_class) == MODEL_CLASSES
    for i, name in enumerate(MODEL_CLASSES):
        assert result.per_class[name] == pytest.approx(expected_cm[i][i] / sum(expected_cm[i]))
    # The loaded model equals the saved one.
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), setup["model"](x))


def test_evaluate_folder_subset_of_classes_top5_and_training_mode(tmp_path: Path) -> None:
    names = ["a", "b", "c", "d", "e", "f"]
    folder = _write_folder(tmp_path / "photos", {"e": 3, "b": 2}, seed=1)
    model = _make_model(names, folder).train()

    result = evaluate_folder(model, folder, batch_size=2, num_workers=2, progress=False)

    model.eval()
    expected_cm, logits, labels = _direct_confusion(model, folder)
    assert result.confusion.shape == (6, 6)
    assert result.confusion.tolist() == expected_cm
    assert list(result.per_class) == ["b", "e"]  # only the classes the folder holds, in model order
    top5 = sum(label in logits[i].topk(5).indices.tolist() for i, label in enumerate(labels)) / len(labels)
    assert result.top5 == pytest.approx(top5)
    written = result.to_dict()  # eval.json's fields
    assert written["top5"] == pytest.approx(top5) and written["accuracy"] == pytest.approx(result.accuracy)
    assert written["per_class"] == pytest.approx({"b": expected_cm[1][1] / 2, "e": expected_cm[4][4] / 3})
    observed_cm, observed_names = result.observed()
    assert set(observed_names) >= {"b", "e"} and observed_cm.sum() == 5
    # evaluate_folder restored train mode and left trainable (not inference-mode) parameters.
    model.train()
    evaluate_folder(model, folder, num_workers=0, progress=False)
    assert model.training
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    assert model.classifier.weight.grad is not None


def test_evaluate_folder_reports_top5_from_five_classes(tmp_path: Path) -> None:
    """Top-5 is reported from five classes on (not only above five): with exactly five, every image is a hit."""
    folder = _write_folder(tmp_path / "photos", {"c": 2, "a": 1}, seed=2)
    result = evaluate_folder(_make_model(["a", "b", "c", "d", "e"], folder), folder, num_workers=0, progress=False)
    assert result.top5 == 1.0 and result.to_dict()["top5"] == 1.0


def test_images_per_class_counts_the_true_labels() -> None:
    """eval.json's images_per_class: the images of each class the folder holds (a confusion row), not how often
    the model predicted it (a column)."""
    confusion = torch.tensor([[1, 2, 0], [0, 0, 0], [3, 0, 1]])  # cm[true, predicted]: rows 3, 0, 4; columns 4, 2, 1
    result = EvalResult(accuracy=2 / 7, top5=None, per_class={"a": 1 / 3, "c": 1 / 4}, confusion=confusion,
                        class_names=["a", "b", "c"], num_images=7)  # fmt: skip
    assert result.to_dict()["images_per_class"] == {"a": 3, "c": 4}


def test_unknown_folder_class_is_an_error_naming_it(setup: dict, tmp_path: Path) -> None:
    folder = shutil.copytree(setup["folder"], tmp_path / "photos")
    _write_folder(tmp_path / "extra", {"sunflower": 1})
    shutil.move(tmp_path / "extra" / "sunflower", folder / "sunflower")
    with pytest.raises(DataError, match="sunflower"):
        evaluate_folder(setup["model"], folder, num_workers=0, progress=False)


def test_unreadable_images_are_skipped_counted_and_warned(
    setup: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = shutil.copytree(setup["folder"], tmp_path / "photos")
    (folder / "daisy" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "rose" / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch"):
        result = evaluate_folder(setup["model"], folder, batch_size=4, num_workers=2, progress=False)
    assert sorted(Path(path).name for path, _ in result.skipped) == ["broken.jpg", "empty.png"]
    assert result.num_images == 9
    assert result.confusion.tolist() == _direct_confusion(setup["model"], setup["folder"])[0]
    warnings = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(warnings) == 2 and any("broken.jpg" in w for w in warnings)

    for path in folder.rglob("*_*.*"):
        path.write_bytes(b"garbage")
    with pytest.raises(EvaluationError, match="none of the 11 image files"):
        evaluate_folder(setup["model"], folder, num_workers=0, progress=False)


def test_evaluate_folder_needs_class_names_and_class_folders(setup: dict, tmp_path: Path) -> None:
    model = create_model("mobilevit_xxs", num_classes=3)
    with pytest.raises(EvaluationError, match="no class names"):
        evaluate_folder(model, setup["folder"], num_workers=0, progress=False)
    (tmp_path / "val").mkdir()
    (tmp_path / "train").mkdir()
    with pytest.raises(EvaluationError, match="pass .*val"):
        evaluate_folder(setup["model"], tmp_path, num_workers=0, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features_only": True}, "no classifier"),
        ({"num_classes": 0}, "no classifier"),
        ({"num_classes": 3, "in_chans": 1}, "takes 1-channel input"),
    ],
)
def test_predict_and_evaluate_refuse_models_that_do_not_classify_rgb_images(
    setup: dict, kwargs: dict, message: str
) -> None:
    """Without a classifier the pooled features were ranked as if they were class scores (silently
    wrong); a 1-channel model failed inside oneDNN's convolution."""
    model = create_model("mobilevit_xxs", **kwargs)
    model.class_names = list(MODEL_CLASSES)
    path = sorted(setup["folder"].rglob("*.*"))[0]
    with pytest.raises(EvaluationError, match=message):
        predict_images(model, [path])
    with pytest.raises(EvaluationError, match=message):
        predict_images(fuse_for_inference(model), [path])
    with pytest.raises(EvaluationError, match=message):
        evaluate_folder(model, setup["folder"], num_workers=0, progress=False)


def test_load_model_from_checkpoint_errors(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model_from_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(EvaluationError, match=r"is a folder with no checkpoint \(.pt\) in it"):
        load_model_from_checkpoint(tmp_path)  # e.g. the photo folder, the arguments swapped
    (tmp_path / "notes.pt").write_text("hello")
    inside = rf"is a folder; pass the checkpoint file inside it \(e.g. {tmp_path}/notes.pt\)"
    with pytest.raises(EvaluationError, match=inside):
        load_model_from_checkpoint(tmp_path)
    with pytest.raises(EvaluationError, match=r"cannot read .*notes\.pt"):
        load_model_from_checkpoint(tmp_path / "notes.pt")
    torch.save({"format": "mobilevit-torch", "model_name": "mobilevit_xxs"}, tmp_path / "no_weights.pt")
    with pytest.raises(EvaluationError, match=r"no_weights\.pt holds no weights"):
        load_model_from_checkpoint(tmp_path / "no_weights.pt")
    torch.save(setup["model"].state_dict(), tmp_path / "plain.pt")
    with pytest.raises(EvaluationError, match="not a mobilevit-torch training checkpoint"):
        load_model_from_checkpoint(tmp_path / "plain.pt")


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (MODEL_CLASSES[:2], "2 names for 3 outputs"),
        ([MODEL_CLASSES[0], MODEL_CLASSES[1], MODEL_CLASSES[0]], f"lists {MODEL_CLASSES[0]!r} more than once"),
        ({"a": 0}, "holds class names as dict"),
    ],
)
def test_a_checkpoint_with_unusable_class_names_says_so(
    setup: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture, names: object, reason: str
) -> None:
    """A hand-edited list that cannot label the classifier's outputs (wrong length, a name twice, not a
    list) is dropped with a warning, not silently."""
    payload = torch.load(setup["checkpoint"], weights_only=True)
    payload["class_names"] = names
    edited = save_checkpoint(tmp_path / "edited.pt", payload)
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch"):
        model = load_model_from_checkpoint(edited)
    assert "class names left out" in caplog.text and reason in caplog.text
    assert model.class_names is None
    ranked = predict_images(model, sorted(setup["folder"].rglob("*.*"))[:1], topk=3)[0]
    assert sorted(name for name, _ in ranked) == ["0", "1", "2"]


def test_a_checkpoint_with_an_unknown_model_argument_says_it_is_left_out(
    setup: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    payload = torch.load(setup["checkpoint"], weights_only=True)
    payload["model_args"] = {**payload["model_args"], "width_multiplier": 2.0}
    edited = save_checkpoint(tmp_path / "edited.pt", payload)
    with caplog.at_level(logging.WARNING, logger="mobilevit_torch"):
        model = load_model_from_checkpoint(edited)
    assert "model_args width_multiplier are not arguments of mobilevit_xxs; left out" in caplog.text
    assert model.class_names == MODEL_CLASSES


def test_predict_images_ranks_classes_by_probability(setup: dict, tmp_path: Path) -> None:
    model = setup["model"]
    paths = sorted(setup["folder"].rglob("*.*"))[:3]
    predictions = predict_images(model, paths, topk=5, batch_size=2)  # topk capped at 3 classes

    _, logits, _ = _direct_confusion(model, setup["folder"])
    probs = logits[:3].softmax(dim=1)
    assert len(predictions) == 3
    for ranked, p in zip(predictions, probs, strict=True):
        assert len(ranked) == 3 and len({name for name, _ in ranked}) == 3
        # Each class with its own probability, highest first (compared by value: near-equal probabilities
        # of an untrained model may swap places between two batchings by float rounding).
        expected = dict(zip(MODEL_CLASSES, p.tolist(), strict=True))
        assert [prob for _, prob in ranked] == pytest.approx([expected[name] for name, _ in ranked], abs=1e-5)
        assert [prob for _, prob in ranked] == pytest.approx(sorted(p.tolist(), reverse=True), abs=1e-5)
        assert math.fsum(prob for _, prob in ranked) == pytest.approx(1.0, abs=1e-5)
    assert len(predict_images(model, paths[:1], topk=1)[0]) == 1

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="broken.jpg"):
        predict_images(model, [paths[0], broken])
    with pytest.raises(BadImageError, match="missing.jpg"):
        predict_images(model, [paths[0], tmp_path / "missing.jpg"])
    with pytest.raises(EvaluationError, match="topk"):
        predict_images(model, paths, topk=0)


def test_predict_images_takes_one_path_and_refuses_folders_and_bad_batch_sizes(setup: dict) -> None:
    model = setup["model"]
    path = sorted(setup["folder"].rglob("*.*"))[0]
    expected = predict_images(model, [path], topk=2)
    assert predict_images(model, path, topk=2) == expected  # not one "path" per character
    assert predict_images(model, str(path), topk=2) == expected
    with pytest.raises(BadImageError, match="is a folder, not an image file; pass the images in it"):
        predict_images(model, [path, setup["folder"]])
    with pytest.raises(EvaluationError, match="batch_size must be >= 1, got 0"):
        predict_images(model, [path], batch_size=0)
    with pytest.raises(EvaluationError, match="batch_size must be >= 1, got 0"):
        evaluate_folder(model, setup["folder"], batch_size=0, progress=False)
    with pytest.raises(EvaluationError, match="num_workers must be >= 0, got -1"):
        evaluate_folder(model, setup["folder"], num_workers=-1, progress=False)


def test_counts_must_be_integers(setup: dict) -> None:
    """A float or string count was a TypeError/ValueError from inside torch.topk, range() or the DataLoader."""
    model, path = setup["model"], sorted(setup["folder"].rglob("*.*"))[0]
    for kwargs in ({"topk": 2.5}, {"topk": "3"}, {"topk": True}, {"batch_size": 2.0}):
        name = next(iter(kwargs))
        with pytest.raises(TypeError, match=f"^{name} must be an integer, got "):
            predict_images(model, [path], **kwargs)
    for kwargs in ({"batch_size": 2.5}, {"num_workers": "2"}):
        name = next(iter(kwargs))
        with pytest.raises(TypeError, match=f"^{name} must be an integer, got "):
            evaluate_folder(model, setup["folder"], progress=False, **kwargs)
    assert predict_images(model, [path], topk=numpy.int64(2)) == predict_images(model, [path], topk=2)
    with pytest.raises(BadImageError, match=r"<PIL image, item 0>: empty image \(0 x 0 pixels\)"):
        predict_images(model, Image.new("RGB", (0, 0)))


def test_predict_images_takes_pil_images_as_their_files(setup: dict, tmp_path: Path) -> None:
    """A PIL image gets the prediction of the same image saved to disk, in any mix with paths."""
    model = setup["model"]
    jpeg = sorted(setup["folder"].rglob("*.jpg"))[0]
    g = torch.Generator().manual_seed(3)
    pixels = (torch.rand(50, 70, 3, generator=g) * 255).to(torch.uint8).numpy()
    in_memory = Image.fromarray(pixels)
    in_memory.save(tmp_path / "saved.png")  # lossless: the same pixels on disk
    gray = in_memory.convert("L")
    gray.save(tmp_path / "gray.png")
    # A photo taken sideways: pixels stored 70 wide, EXIF says rotate 90 degrees to view (orientation 6).
    exif = Image.Exif()
    exif[0x0112] = 6
    in_memory.save(tmp_path / "sideways.jpg", exif=exif, quality=95)

    files = [tmp_path / "saved.png", jpeg, tmp_path / "gray.png", tmp_path / "sideways.jpg"]
    expected = predict_images(model, files, topk=3, batch_size=3)  # batches of 3 and 1, as below
    with Image.open(jpeg) as opened, Image.open(tmp_path / "sideways.jpg") as sideways:  # lazily loaded files
        images = [in_memory, opened, gray, sideways]
        assert predict_images(model, images, topk=3, batch_size=3) == expected
        mixed = [in_memory, str(jpeg), gray, tmp_path / "sideways.jpg"]
        assert predict_images(model, mixed, topk=3, batch_size=3) == expected
        assert sideways.size == (70, 50)  # the caller's image is not turned
    # One image on its own (compared at the same batch size: batch size changes float rounding).
    assert predict_images(model, in_memory, topk=3) == predict_images(model, tmp_path / "saved.png", topk=3)
    assert (in_memory.mode, gray.mode) == ("RGB", "L")


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([Path("a.jpg"), 42], r"item 1 is int"),
        ([torch.rand(3, 64, 64)], r"item 0 is torch.Tensor"),
        (torch.rand(3, 64, 64), r"one or a list; got torch.Tensor"),
        (numpy.zeros((64, 64, 3), numpy.uint8), r"one or a list; got numpy.ndarray"),
        (b"a.jpg", r"one or a list; got bytes"),
        (None, r"one or a list; got NoneType"),
    ],
)
def test_predict_images_names_what_it_cannot_take(setup: dict, images: object, message: str) -> None:
    with pytest.raises(TypeError, match=r"predict_images\(\) takes image files \(str or os.PathLike\) or PIL images"):
        predict_images(setup["model"], images)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=message):
        predict_images(setup["model"], images)  # type: ignore[arg-type]


def test_a_truncated_pil_image_is_a_bad_image_naming_its_place(setup: dict, tmp_path: Path) -> None:
    path = sorted(setup["folder"].rglob("*.jpg"))[0]
    data = path.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # a whole header, half the pixels
    with Image.open(tmp_path / "cut.jpg") as cut, pytest.raises(BadImageError, match=r"<PIL image, item 1>: corrupt"):
        predict_images(setup["model"], [path, cut])


def test_inference_runs_a_fused_copy_and_leaves_the_model_as_it_was(
    setup: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = setup["model"].train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    paths = sorted(setup["folder"].rglob("*.*"))
    expected = predict_images(fuse_for_inference(model), paths, topk=3)
    norms = 0

    def counting_batch_norm(*args: object, **kwargs: object) -> torch.Tensor:
        nonlocal norms
        norms += 1
        return real_batch_norm(*args, **kwargs)

    real_batch_norm = torch.nn.functional.batch_norm
    monkeypatch.setattr(torch.nn.functional, "batch_norm", counting_batch_norm)
    try:
        predictions = predict_images(model, paths, topk=3)
        result = evaluate_folder(model, setup["folder"], num_workers=0, progress=False)
        assert norms == 0, "inference ran BatchNorm: the folded copy was not used"
        # Same ranking as the fused model; probabilities equal to float32 rounding.
        assert [[n for n, _ in r] for r in predictions] == [[n for n, _ in r] for r in expected]
        for got, want in zip(predictions, expected, strict=True):
            assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-6)
        assert result.confusion.tolist() == _direct_confusion(model.eval(), setup["folder"])[0]
        assert norms > 0  # the reference above ran the unfused model
    finally:
        model.eval()
    # The caller's model: not folded, same weights and statistics, mode and trainability unchanged.
    model.train()
    predict_images(model, paths[:1])
    assert model.training and not is_fused(model)
    assert all(p.requires_grad for p in model.parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    model.eval()

    # An already fused model is used as it is, and its mode restored.
    fused = fuse_for_inference(model).train()
    assert is_fused(fused)
    assert predict_images(fused, paths, topk=3) == expected
    assert fused.training


def _run(script: str, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("script", ["evaluate.py", "predict.py"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--help"], None),
        (["/no/such/best.pt", "photos"], "checkpoint not found: /no/such/best.pt"),
        (["README.md", "photos", "--device", "gpu"], "unsupported device 'gpu' (use auto, cpu, cuda or cuda:N)"),
    ],
)
def test_help_and_early_mistakes_answer_without_importing_torch(
    script: str, args: list[str], message: str | None
) -> None:
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{script!r}, *{args!r}]\n"
        "try:\n"
        f"    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "torch imported: False", done.stdout + done.stderr
    if message is None:
        assert done.stdout.startswith(f"usage: {script}") and "exit 0" in done.stdout
    else:
        assert "exit 2" in done.stdout
        _one_error_line(done.stderr, message)


def test_evaluate_cli_prints_report_and_writes_files(setup: dict) -> None:
    done = _run(
        "evaluate.py",
        setup["checkpoint"],
        setup["folder"],
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    expected_cm, _, _ = _direct_confusion(setup["model"], setup["folder"])
    accuracy = sum(expected_cm[i][i] for i in range(3)) / 9
    assert f"accuracy  {accuracy:.2%}" in done.stdout
    assert "top-5     n/a" in done.stdout
    counts = {"tulip": 4, "daisy": 2, "rose": 3}
    per_class = {name: expected_cm[i][i] / counts[name] for i, name in enumerate(MODEL_CLASSES)}
    assert len(set(per_class.values())) > 1  # the rows can tell one class's accuracy from another's
    lines = [line.split() for line in done.stdout.splitlines()]
    rows = {parts[0]: parts[1:] for parts in lines if parts and parts[0] in MODEL_CLASSES}
    for name in MODEL_CLASSES:  # the table: class, images, accuracy
        assert rows[name] == [str(counts[name]), f"{per_class[name]:.2%}"], done.stdout

    output = setup["checkpoint"].parent / "eval_photos"  # the default: next to the checkpoint
    report = json.loads((output / "eval.json").read_text())
    assert report["accuracy"] == pytest.approx(accuracy)
    assert report["confusion"] == expected_cm
    assert report["images_per_class"] == counts
    assert report["per_class"] == pytest.approx(per_class) and report["top5"] is None
    with Image.open(output / "confusion_matrix.png") as image:
        assert image.format == "PNG"


def test_evaluate_cli_prints_top5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Eight classes: the top-5 line shows the top-5 accuracy (here unlike the top-1 one), as eval.json does."""
    names = ["a", "b", "c", "d", "e", "f", "g", "h"]
    folder = _write_folder(tmp_path / "photos", {"b": 3, "e": 3, "h": 3}, seed=3)
    model = _make_model(names, folder)
    checkpoint = save_checkpoint(tmp_path / "best.pt", {**model_payload(model, names), "epoch": 0})
    _, logits, labels = _direct_confusion(model, folder)
    top1 = sum(int(logits[i].argmax()) == label for i, label in enumerate(labels)) / len(labels)
    top5 = sum(label in logits[i].topk(5).indices.tolist() for i, label in enumerate(labels)) / len(labels)
    assert f"{top1:.2%}" != f"{top5:.2%}"
    argv = [str(a) for a in (checkpoint, folder, "--device", "cpu", "--workers", "0", "--no-progress",
                             "--output", tmp_path / "report")]  # fmt: skip
    assert _script("evaluate.py").main(argv) == 0
    out = capsys.readouterr().out
    assert f"accuracy  {top1:.2%}\ntop-5     {top5:.2%}\n" in out, out
    assert json.loads((tmp_path / "report" / "eval.json").read_text())["top5"] == pytest.approx(top5)


def _script(name: str):
    """Import a top-level script, to call its ``main(argv)`` in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(f"_script_{Path(name).stem}", REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_error_line(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], stderr


def test_evaluate_cli_missing_checkpoint_is_one_line_exit_2(setup: dict, tmp_path: Path) -> None:
    done = _run("evaluate.py", tmp_path / "missing.pt", setup["folder"], "--device", "cpu")
    assert done.returncode == 2
    _one_error_line(done.stderr, f"checkpoint not found: {tmp_path / 'missing.pt'}")


@pytest.mark.parametrize("case", ["not a checkpoint", "unknown class folder", "output not writable"])
def test_evaluate_cli_user_errors_in_process(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    checkpoint, folder, extra = setup["checkpoint"], setup["folder"], []
    if case == "not a checkpoint":
        checkpoint, expected = tmp_path / "weights.pt", "not a mobilevit-torch training checkpoint"
        torch.save({"w": torch.zeros(1)}, checkpoint)
    elif case == "unknown class folder":
        folder, expected = _write_folder(tmp_path / "photos", {"daisy": 1, "cactus": 1}), "cactus"
    else:
        (tmp_path / "taken").write_text("a file where the output folder should go")
        extra, expected = ["--output", tmp_path / "taken"], "taken"
    argv = [str(a) for a in (checkpoint, folder, "--device", "cpu", "--workers", "0", "--no-progress", *extra)]
    assert _script("evaluate.py").main(argv) == 2
    _one_error_line(capsys.readouterr().err, expected)


@pytest.mark.parametrize("where", ["a file", "under a file", "/proc"])
def test_evaluate_cli_checks_output_before_scoring(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    (tmp_path / "taken").write_text("a file where the output folder should go")
    output = {"a file": tmp_path / "taken", "under a file": tmp_path / "taken" / "sub", "/proc": Path("/proc/x")}[where]

    def no_scoring(*args: object, **kwargs: object) -> None:
        raise AssertionError("the folder was scored although --output cannot be written")

    monkeypatch.setattr("mobilevit_torch.evaluation.evaluate_folder", no_scoring)
    argv = [str(setup["checkpoint"]), str(setup["folder"]), "--device", "cpu", "--output", str(output)]
    assert _script("evaluate.py").main(argv) == 2
    _one_error_line(capsys.readouterr().err, f"--output {output}")


def test_evaluate_cli_prints_results_before_writing_them(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "report"
    (output / "eval.json").mkdir(parents=True)  # the folder is fine; the file cannot be written
    argv = [str(a) for a in (setup["checkpoint"], setup["folder"], "--device", "cpu", "--workers", "0",
                             "--no-progress", "--output", output)]  # fmt: skip
    assert _script("evaluate.py").main(argv) == 2
    captured = capsys.readouterr()
    assert "accuracy  " in captured.out  # the scores were not lost
    _one_error_line(captured.err, "--output")


def test_evaluate_cli_leaves_no_empty_output_folder_on_error(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _write_folder(tmp_path / "photos", {"daisy": 1, "cactus": 1})
    argv = [str(a) for a in (setup["checkpoint"], folder, "--device", "cpu", "--workers", "0", "--no-progress",
                             "--output", tmp_path / "new")]  # fmt: skip
    assert _script("evaluate.py").main(argv) == 2
    _one_error_line(capsys.readouterr().err, "cactus")
    assert not (tmp_path / "new").exists()


def test_resolve_device_checks_type_and_index(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("mps", "meta", "cpu:1", "gpu"):
        with pytest.raises(EvaluationError, match=rf"(unsupported|unknown) device '{bad}'"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(EvaluationError, match=r"'cuda:7': this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:7")


@pytest.mark.parametrize("device", ["mps", "meta"])
def test_predict_cli_unsupported_device_is_one_line(
    setup: dict, capsys: pytest.CaptureFixture[str], device: str
) -> None:
    image = sorted(setup["folder"].rglob("*.*"))[0]
    assert _script("predict.py").main([str(setup["checkpoint"]), str(image), "--device", device]) == 2
    _one_error_line(capsys.readouterr().err, f"unsupported device '{device}'")


def test_predict_cli_prints_class_names(setup: dict) -> None:
    images = sorted(setup["folder"].rglob("*.*"))[:2]
    done = _run("predict.py", setup["checkpoint"], *images, "--topk", "2", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6
    assert lines[0] == str(images[0]) and lines[3] == str(images[1])
    expected = predict_images(setup["model"], images, topk=2)
    for block, ranked in zip((lines[1:3], lines[4:6]), expected, strict=True):
        assert [line.split() for line in block] == [[name, f"{p:.2%}"] for name, p in ranked]


def test_predict_cli_classifies_every_image_in_a_folder_and_counts_skips(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    images = sorted(setup["folder"].rglob("*.*"))[:3]
    for index, image in enumerate(images):
        shutil.copy(image, (folder / "sub" if index else folder) / f"{index}{image.suffix}")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image file name")
    predict = _script("predict.py")
    named = sorted(setup["folder"].rglob("*.*"))[3]
    assert predict.main([str(setup["checkpoint"]), str(named), str(folder), "--topk", "1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    copies = [(folder / "sub" if index else folder) / f"{index}{image.suffix}" for index, image in enumerate(images)]
    expected = [named, *sorted(copies)]  # named first, then the folder's images in path order, broken.jpg skipped
    assert [Path(line) for line in captured.out.splitlines() if not line.startswith(" ")] == expected
    assert "skipped 1 unreadable image file(s)" in captured.err
    assert f"skipped 1 file(s) in {folder} that are not of an image type read here (1 .txt)" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict.main([str(setup["checkpoint"]), str(empty), "--device", "cpu"]) == 2
    _one_error_line(capsys.readouterr().err, "is a folder with no image files in it")


def test_predict_cli_checks_named_files_before_any_work(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 good images (more than one batch) and a broken one at the end: refused before anything is classified.
    image = sorted(setup["folder"].rglob("*.*"))[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("images were classified although a named file is unreadable")

    monkeypatch.setattr("mobilevit_torch.evaluation.predict_images", no_work)
    argv = [str(setup["checkpoint"]), *[str(image)] * 40, str(broken), "--device", "cpu"]
    assert _script("predict.py").main(argv) == 2
    _one_error_line(capsys.readouterr().err, f"{broken}: not a recognised image format")


def test_predict_cli_lists_a_folder_as_evaluation_does(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hidden files and folders skipped (no warning, no count), symlinked folders followed, a link loop listed once.
    image = sorted(setup["folder"].rglob("*.*"))[0]
    folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(image, folder / f"a{image.suffix}")
    shutil.copy(image, folder / ".ipynb_checkpoints" / f"a-checkpoint{image.suffix}")
    shutil.copy(image, elsewhere / f"b{image.suffix}")
    (folder / "._a.jpg").write_bytes(b"macOS resource fork")
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(elsewhere, target_is_directory=True)
    assert _script("predict.py").main([str(setup["checkpoint"]), str(folder), "--topk", "1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    listed = [Path(line) for line in captured.out.splitlines() if not line.startswith(" ")]
    assert listed == [folder / f"a{image.suffix}", folder / "linked" / f"b{image.suffix}"]
    assert "skipped" not in captured.err


def test_predict_cli_unreadable_image_is_one_line_exit_2(
    setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = sorted(setup["folder"].rglob("*.*"))[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    predict = _script("predict.py")
    assert predict.main([str(setup["checkpoint"]), str(image), str(broken), "--device", "cpu"]) == 2
    _one_error_line(capsys.readouterr().err, f"{broken}: not a recognised image format")
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error, also status 2
        predict.main([str(setup["checkpoint"]), str(image), "--topk", "0"])
    assert exit_info.value.code == 2

    # As a user sees it: one line, no warning repeating it; further bad files are named in it.
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    done = _run("predict.py", setup["checkpoint"], image, broken, empty, "--device", "cpu")
    assert done.returncode == 2
    _one_error_line(done.stderr, f"{broken}: not a recognised image format (also unreadable: {empty})")


# -- an exported file in place of the checkpoint -----------------------------------------------------


@pytest.fixture(scope="module")
def exported(setup: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint exported to ONNX (fixed batch 1, as export.py writes it by default), with its sidecar."""
    pytest.importorskip("onnxruntime", reason="the ONNX toolchain is not installed (pip install -e '.[onnx]')")
    from mobilevit_torch.export import export_model

    output = tmp_path_factory.mktemp("exported") / "model.onnx"
    return export_model(format="onnx", checkpoint=setup["checkpoint"], data_root=setup["folder"], output=output).path


def test_an_exported_file_scores_and_ranks_as_its_checkpoint(setup: dict, exported: Path) -> None:
    """evaluate_folder and predict_images take the .onnx as they take the model: same confusion, same ranking."""
    from mobilevit_torch.export import load_exported

    model = load_exported(exported)
    assert model.class_names == MODEL_CLASSES and model.preprocessing == setup["model"].preprocessing
    result = evaluate_folder(model, setup["folder"], batch_size=4, num_workers=0, progress=False)
    expected_cm, expected_logits, _ = _direct_confusion(setup["model"], setup["folder"])
    assert result.confusion.tolist() == expected_cm and result.num_images == 9
    assert sum(any(row[c] for row in expected_cm) for c in range(3)) > 1, "the model predicts one class only"

    paths = sorted(setup["folder"].rglob("*.*"))
    got, want = predict_images(model, paths, topk=3), predict_images(setup["model"], paths, topk=3)
    for ranked, expected in zip(got, want, strict=True):
        assert [name for name, _ in ranked] == [name for name, _ in expected]
        assert [p for _, p in ranked] == pytest.approx([p for _, p in expected], abs=1e-4)  # fp32 parity bound
    _, logits, _ = _direct_confusion(model, setup["folder"])  # the file's own logits, image by image
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=0)


def test_evaluate_and_predict_cli_take_an_exported_file(
    setup: dict, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, image = setup["folder"], sorted(setup["folder"].rglob("*.png"))[0]
    common = ["--device", "cpu", "--workers", "0", "--no-progress"]
    argv = [str(setup["checkpoint"]), str(folder), *common, "--output", str(tmp_path / "from_checkpoint")]
    assert _script("evaluate.py").main(argv) == 0
    from_checkpoint = capsys.readouterr().out
    argv = [str(exported), str(folder), *common, "--output", str(tmp_path / "report")]
    assert _script("evaluate.py").main(argv) == 0
    from_file = capsys.readouterr().out
    assert "model     mobilevit_xxs (onnx fp32) from " in from_file
    table = [line for line in from_file.splitlines() if line.startswith(("accuracy", *MODEL_CLASSES))]
    assert len(table) == 4 and table == [
        line for line in from_checkpoint.splitlines() if line.startswith(("accuracy", *MODEL_CLASSES))
    ]
    assert json.loads((tmp_path / "report" / "eval.json").read_text())["checkpoint"] == str(exported)

    assert _script("predict.py").main([str(exported), str(image), "--topk", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = predict_images(setup["model"], [image], topk=2)[0]
    assert lines[0] == str(image) and [line.split()[0] for line in lines[1:]] == [name for name, _ in expected]


@pytest.mark.parametrize(
    "case",
    ["no sidecar", "not JSON", "not a sidecar", "no preprocessing", "other size", "fewer names", "more names",
     "not ONNX", "cuda"],
)  # fmt: skip
def test_an_exported_file_that_cannot_be_run_is_one_line(
    setup: dict, exported: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "copy.onnx"
    shutil.copy(exported, path)
    sidecar = json.loads(Path(f"{exported}.json").read_text())
    device = "cpu"
    if case == "not JSON":
        Path(f"{path}.json").write_text("{")
    elif case == "not a sidecar":
        Path(f"{path}.json").write_text(json.dumps({"format": "onnx"}))
    elif case == "other size":
        sidecar["preprocessing"]["input_size"] = 96
        Path(f"{path}.json").write_text(json.dumps(sidecar))
    elif case == "no preprocessing":
        del sidecar["preprocessing"]
        Path(f"{path}.json").write_text(json.dumps(sidecar))
    elif case in ("fewer names", "more names"):  # output i is read as name i: a traceback, or a name never given
        sidecar["class_names"] = MODEL_CLASSES[:2] if case == "fewer names" else [*MODEL_CLASSES, "lily"]
        Path(f"{path}.json").write_text(json.dumps(sidecar))
    elif case == "not ONNX":
        path.write_bytes(b"not a protobuf")
        Path(f"{path}.json").write_text(json.dumps(sidecar))
    elif case == "cuda":
        Path(f"{path}.json").write_text(json.dumps(sidecar))
        device = "cuda"
    messages = {
        "no sidecar": "has no sidecar copy.onnx.json beside it",
        "not JSON": "copy.onnx.json cannot be read as JSON",
        "not a sidecar": "is not an export sidecar: it has no list of class names",
        "other size": "takes [1, 3, 64, 64] input, but its sidecar's preprocessing makes 96 x 96 images",
        "no preprocessing": "copy.onnx.json is not an export sidecar: it has no preprocessing",
        "fewer names": "copy.onnx gives 3 class scores, but its sidecar names 2 classes",
        "more names": "copy.onnx gives 3 class scores, but its sidecar names 4 classes",
        "not ONNX": "copy.onnx cannot be run by its runtime",
        "cuda": "an exported file runs on the CPU",
    }
    image = sorted(setup["folder"].rglob("*.png"))[0]
    assert _script("predict.py").main([str(path), str(image), "--device", device]) == 2
    _one_error_line(capsys.readouterr().err, messages[case])


def test_an_exported_file_however_it_is_named_or_reached(
    setup: dict, exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upper-case suffix and a link to the file (its sidecar beside the file) run; a sidecar or a folder passed
    for the file is one line naming what to pass; the default report folder is the export's own."""
    image = sorted(setup["folder"].rglob("*.png"))[0]
    upper = tmp_path / "MODEL.ONNX"
    shutil.copy(exported, upper)
    shutil.copy(f"{exported}.json", f"{upper}.json")
    link = tmp_path / "latest.onnx"
    link.symlink_to(exported)
    for path in (upper, link):
        assert _script("predict.py").main([str(path), str(image), "--topk", "1"]) == 0, path
        assert capsys.readouterr().out.splitlines()[0] == str(image)
    for sidecar in (Path(f"{exported}.json"), Path(f"{exported}.labels.txt")):
        assert _script("predict.py").main([str(sidecar), str(image)]) == 2
        message = f"is a sidecar of the exported file model.onnx: pass {exported} itself"
        _one_error_line(capsys.readouterr().err, message)
    (tmp_path / "dir.onnx").mkdir()
    assert _script("predict.py").main([str(tmp_path / "dir.onnx"), str(image)]) == 2
    _one_error_line(capsys.readouterr().err, "dir.onnx is a folder, not an exported file")

    argv = [str(exported), str(setup["folder"]), "--device", "cpu", "--workers", "0", "--no-progress"]
    assert _script("evaluate.py").main(argv) == 0
    report = exported.parent / "eval_photos_model.onnx" / "eval.json"
    assert json.loads(report.read_text())["checkpoint"] == str(exported)
