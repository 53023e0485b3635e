"""scan_image_folder and make_split: ImageFolder semantics, clear errors, deterministic stratified splits."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mobilevit_torch.data import folder
from mobilevit_torch.data.folder import DataError, DatasetSplit, Sample, check_classes, make_split, scan_image_folder


def image(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)
    return path


def class_tree(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image(root / name / f"img{i:03d}.png")
    return root


def test_scan_follows_image_folder_semantics(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "photos"
    image(root / "cats" / "b.jpg")
    image(root / "cats" / "a.PNG")  # extensions are case-insensitive
    image(root / "cats" / "nested" / "deeper" / "c.jpeg")  # recursive inside a class
    image(root / "cats" / ".hidden.jpg")
    image(root / "cats" / ".thumbnails" / "t.jpg")
    (root / "cats" / "notes.txt").write_text("not an image")
    (root / "cats" / "IMG_0001.HEIC").write_bytes(b"an iPhone photo")  # a type Pillow does not read
    image(root / "dogs" / "d.bmp")
    image(root / "dogs" / "e.jfif")
    image(root / ".cache" / "x.jpg")  # hidden folder: not a class
    (root / "empty").mkdir()
    (root / "only_text").mkdir()
    (root / "only_text" / "readme.md").write_text("#")
    (root / "loose.jpg").write_bytes(b"")  # files directly in root are not samples

    with caplog.at_level(logging.WARNING):
        samples, classes = scan_image_folder(root)
    assert classes == ["cats", "dogs"]  # empty classes dropped, labels stay dense
    assert [(Path(s.path).relative_to(root).as_posix(), s.label) for s in samples] == [
        ("cats/a.PNG", 0),
        ("cats/b.jpg", 0),
        ("cats/nested/deeper/c.jpeg", 0),
        ("dogs/d.bmp", 1),
        ("dogs/e.jfif", 1),
    ]
    assert all(Path(s.path).is_absolute() for s in samples)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "empty" in warned and "only_text" in warned
    assert f"skipped 3 file(s) in {root} that are not of an image type read here (1 .heic, 1 .md, 1 .txt)" in warned


def test_scan_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        scan_image_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)

    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        scan_image_folder(tmp_path / "file.txt")

    no_images = tmp_path / "no_images"
    (no_images / "cats").mkdir(parents=True)
    (no_images / "cats" / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"no images found.*\.jpg.*\.png") as info:
        scan_image_folder(no_images)
    assert str(no_images) in str(info.value)

    flat = tmp_path / "flat"
    image(flat / "a.jpg")
    with pytest.raises(DataError, match="one sub-folder per class"):
        scan_image_folder(flat)


def test_scan_with_given_classes(tmp_path: Path) -> None:
    root = class_tree(tmp_path / "val", {"b": 1, "c": 2})
    samples, classes = scan_image_folder(root, class_names=["a", "b", "c"])
    assert classes == ["a", "b", "c"]
    assert [s.label for s in samples] == [1, 2, 2]

    (root / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra") as info:
        scan_image_folder(root, class_names=["a", "b", "c"])
    assert str(root / "zebra") in str(info.value)


def test_split_is_stratified(tmp_path: Path) -> None:
    counts = {"big": 25, "mid": 10, "pair": 2, "single": 1}
    split = make_split(class_tree(tmp_path, counts), seed=0, val_fraction=0.2)
    assert split.source == "split"
    assert split.class_names == ["big", "mid", "pair", "single"]
    val_counts = Counter(split.class_names[s.label] for s in split.val)
    train_counts = Counter(split.class_names[s.label] for s in split.train)
    assert val_counts == {"big": 5, "mid": 2, "pair": 1}  # round(n * f), at least 1 from 2 images, 0 from 1
    assert train_counts == {"big": 20, "mid": 8, "pair": 1, "single": 1}
    assert not {s.path for s in split.train} & {s.path for s in split.val}
    assert len(split.train) + len(split.val) == sum(counts.values())
    assert split.train == sorted(split.train, key=lambda s: (s.label, s.path))
    assert split.val == sorted(split.val, key=lambda s: (s.label, s.path))

    small = make_split(tmp_path, seed=0, val_fraction=0.01)
    assert Counter(s.label for s in small.val) == {0: 1, 1: 1, 2: 1}  # never 0 from a class of >= 2
    seven = make_split(class_tree(tmp_path / "seven", {"a": 7}), seed=0, val_fraction=0.25)
    assert len(seven.val) == 2  # 7 x 0.25 = 1.75 rounds to 2, not down to 1


def test_split_is_deterministic_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = class_tree(tmp_path, {"a": 30, "b": 30})
    first = make_split(root, seed=1)
    assert make_split(root, seed=1) == first
    assert make_split(root, seed=2).val != first.val

    # The same files listed in another order give the same split.
    real_walk = os.walk

    def reversed_walk(top: str | Path, **kwargs: Any) -> Iterator[tuple[str, list[str], list[str]]]:
        for dirpath, dirnames, filenames in real_walk(top, **kwargs):
            dirnames.reverse()
            yield dirpath, dirnames, filenames[::-1]

    monkeypatch.setattr(folder.os, "walk", reversed_walk)
    assert make_split(root, seed=1) == first


def test_split_of_one_class_does_not_depend_on_other_classes(tmp_path: Path) -> None:
    """Adding classes (one sorting first, so every label shifts) leaves the other classes' photos where they were."""
    root = class_tree(tmp_path, {"a": 20, "b": 20})
    before = make_split(root, seed=3, val_fraction=0.25)
    class_tree(root, {"0first": 8, "c": 8})
    after = make_split(root, seed=3, val_fraction=0.25)
    assert after.class_names == ["0first", "a", "b", "c"]
    kept = {s.path for s in after.val if after.class_names[s.label] in ("a", "b")}
    assert kept == {s.path for s in before.val} and len(kept) == 10


def test_train_and_val_folders_are_used_as_given(tmp_path: Path) -> None:
    class_tree(tmp_path / "train", {"a": 3, "b": 2, "c": 2})
    class_tree(tmp_path / "val", {"c": 1, "a": 1})  # a subset of the training classes
    split = make_split(tmp_path, seed=0)
    assert split.source == "folders"
    assert split.class_names == ["a", "b", "c"]
    assert len(split.train) == 7
    assert [(Path(s.path).parent.name, s.label) for s in split.val] == [("a", 0), ("c", 2)]
    assert all("/val/" in s.path for s in split.val)

    class_tree(tmp_path / "val", {"d": 1})
    with pytest.raises(DataError, match="not among the training classes"):
        make_split(tmp_path, seed=0)


def test_lone_train_folder_is_split(tmp_path: Path) -> None:
    class_tree(tmp_path / "train", {"a": 10, "b": 10})
    split = make_split(tmp_path, seed=0)
    assert split.source == "split"
    assert split.class_names == ["a", "b"]  # not a single class called "train"
    assert len(split.val) == 2


def test_bad_val_fraction(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        make_split(class_tree(tmp_path, {"a": 2}), seed=0, val_fraction=1.0)


def test_split_json_round_trip(tmp_path: Path) -> None:
    split = make_split(class_tree(tmp_path / "data", {"a": 5, "b": 4}), seed=0, val_fraction=0.3)
    path = split.to_json(tmp_path / "out" / "split.json")
    assert DatasetSplit.from_json(path) == split
    assert str(tmp_path / "data") in path.read_text()  # the root is stored once, members relative to it

    single = DatasetSplit(train=[Sample(path=str(tmp_path / "x.png"), label=0)], val=[], class_names=["x"],
                          source="split")
    assert DatasetSplit.from_json(single.to_json(tmp_path / "single.json")) == single

    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(DataError, match="not a mobilevit-torch split file"):
        DatasetSplit.from_json(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="cannot read split file"):
        DatasetSplit.from_json(tmp_path / "broken.json")
    bad_label = path.read_text().replace('"class_names": [\n  "a",\n  "b"\n ]', '"class_names": ["a"]')
    (tmp_path / "bad_label.json").write_text(bad_label)
    with pytest.raises(DataError, match="malformed split file"):
        DatasetSplit.from_json(tmp_path / "bad_label.json")


def test_check_classes(caplog: pytest.LogCaptureFixture) -> None:
    names = ["a", "b", "c"]
    with pytest.raises(DataError, match=r"only one class \(a\) in photos: a classifier needs at least 2 classes"):
        check_classes([0, 0], [0], ["a"], root="photos", source="split")
    with pytest.raises(DataError, match="only 1 of the 3 classes in photos have readable training images"):
        check_classes([0, 0], [0, 1], names, root="photos", source="split")
    with pytest.raises(DataError, match=r"no validation images: .*at least 2 photos for a val_fraction split"):
        check_classes([0, 1, 2], [], names, root="photos", source="split")
    with pytest.raises(DataError, match="no validation images: photos/val holds no readable photos"):
        check_classes([0, 1, 2], [], names, root="photos", source="folders")
    with caplog.at_level(logging.WARNING):
        check_classes([0, 1], [0], names, root="photos", source="split")
        check_classes([0, 1], [0], names, root="photos", source="split", warn=False)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "class 'b' has no validation images (it needs at least 2 photos): its accuracy is not measured",
        "class 'c' has no readable training images: the model cannot learn it",
    ]
