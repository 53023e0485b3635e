"""Image folders with one sub-folder per class, and deterministic train/val splits of them.

The layout is torchvision's ``ImageFolder``: ``root/<class>/**/<image>``. A root that already holds
``train/`` and ``val/`` is used as given; anything else is split per class (stratified) with a
seeded shuffle, so every run — and every DDP rank — sees the same split.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilevit_torch.data.images import IMAGE_EXTENSIONS, is_image_file
from mobilevit_torch.files import atomic_write

logger = logging.getLogger(__name__)

SPLIT_FORMAT = "mobilevit-torch-split"


class DataError(ValueError):
    """A problem with the user's data (missing folder, no images, bad split file); the message names the path."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass
class DatasetSplit:
    """Train and validation samples with the class list their labels index.

    ``source`` is ``"folders"`` when the root's own ``train/`` and ``val/`` were used and
    ``"split"`` when the split was drawn here.
    """

    train: list[Sample]
    val: list[Sample]
    class_names: list[str]
    source: str

    def to_json(self, path: str | Path) -> Path:
        """Write the split (paths relative to their common folder, which is stored too) atomically."""
        path = Path(path)
        all_paths = [s.path for s in (*self.train, *self.val)]
        root = os.path.commonpath(all_paths) if all_paths else ""
        if all_paths and len(all_paths) == 1:
            root = os.path.dirname(root)
        payload = {
            "format": SPLIT_FORMAT,
            "version": 1,
            "source": self.source,
            "class_names": list(self.class_names),
            "root": root,
            "train": [[os.path.relpath(s.path, root), s.label] for s in self.train],
            "val": [[os.path.relpath(s.path, root), s.label] for s in self.val],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, encoding="utf-8") as file:
            json.dump(payload, file, indent=1)
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> DatasetSplit:
        """Read a split written by :meth:`to_json`; a malformed file is a :class:`DataError`."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read split file {path} ({error})") from None
        if not isinstance(payload, dict) or payload.get("format") != SPLIT_FORMAT:
            raise DataError(f"{path} is not a mobilevit-torch split file (no format {SPLIT_FORMAT!r})")
        try:
            class_names = [str(name) for name in payload["class_names"]]
            root = str(payload["root"])
            train = _samples_from_json(payload["train"], root, len(class_names))
            val = _samples_from_json(payload["val"], root, len(class_names))
            source = str(payload["source"])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"malformed split file {path} ({type(error).__name__}: {error})") from None
        return cls(train=train, val=val, class_names=class_names, source=source)


def _samples_from_json(rows: Any, root: str, num_classes: int) -> list[Sample]:
    samples = []
    for relative, label in rows:
        if not isinstance(label, int) or not 0 <= label < num_classes:
            raise ValueError(f"label {label!r} of {relative!r} is not in [0, {num_classes})")
        samples.append(Sample(path=os.path.join(root, relative), label=label))
    return samples


def scan_image_folder(root: Path, class_names: list[str] | None = None) -> tuple[list[Sample], list[str]]:
    """Samples of ``root/<class>/**/<image>``, sorted by (label, path), and the class list.

    Without ``class_names`` the classes are the sorted sub-folder names, minus those holding no
    image (dropped with a warning, so labels stay dense). With ``class_names`` (val/ following
    train/'s classes) labels index that list and a folder outside it is an error.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data folder {root} is not a folder")

    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_names is not None:
        unknown = [name for name in folders if name not in class_names]
        if unknown:
            raise DataError(
                f"{root / unknown[0]} is a class folder that is not among the training classes "
                f"({', '.join(class_names)})"
            )
    others: Counter[str] = Counter()
    files = {name: list_image_files(root / name, others=others) for name in folders}
    log_other_files(others, root)

    if class_names is None:
        empty = [name for name in folders if not files[name]]
        for name in empty:
            logger.warning("class folder %s holds no image files; dropping class %r", root / name, name)
        class_names = [name for name in folders if files[name]]
    else:
        for name in folders:
            if not files[name]:
                logger.warning("class folder %s holds no image files", root / name)

    samples = [
        Sample(path=path, label=label)
        for label, name in enumerate(class_names)
        for path in files.get(name, [])
    ]
    if not samples:
        raise DataError(_no_images_message(root, folders))
    return samples, list(class_names)


def holds_class_folders(root: Path) -> bool:
    """Whether :func:`scan_image_folder` would find a class in ``root``: a folder with a sub-folder holding an
    image. A quiet probe: the warnings about other files and empty classes are the scan's to give, once."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return False
    folders = (path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    return any(list_image_files(folder) for folder in folders)


def make_split(root: Path, *, seed: int, val_fraction: float = 0.1) -> DatasetSplit:
    """``root/train`` + ``root/val`` as given, or a seeded stratified split of ``root`` (or of ``root/train``).

    Per class, the sorted files are shuffled with a generator seeded by (seed, class name) — so a
    class's split does not change when another class is added — and ``round(n * val_fraction)``
    of them (at least one when the class has two or more, never all) go to validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(os.path.abspath(Path(root).expanduser()))
    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        train, class_names = scan_image_folder(train_dir)
        val, _ = scan_image_folder(val_dir, class_names=class_names)
        return DatasetSplit(train=train, val=val, class_names=class_names, source="folders")

    if train_dir.is_dir() and not val_dir.exists():
        # A lone train/ would otherwise be read as a single class called "train".
        logger.info("%s has train/ but no val/: splitting train/ into train and validation", root)
        root = train_dir
    samples, class_names = scan_image_folder(root)
    by_class: dict[int, list[Sample]] = {label: [] for label in range(len(class_names))}
    for sample in samples:
        by_class[sample.label].append(sample)

    train, val = [], []
    for label, members in by_class.items():
        members = sorted(members, key=lambda s: s.path)
        random.Random(f"{seed}:{class_names[label]}").shuffle(members)
        n_val = _num_val(len(members), val_fraction)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return DatasetSplit(
        train=sorted(train, key=_label_then_path),
        val=sorted(val, key=_label_then_path),
        class_names=class_names,
        source="split",
    )


def check_classes(
    train_labels: list[int],
    val_labels: list[int],
    class_names: list[str],
    *,
    root: str | Path,
    source: str,
    warn: bool = True,
) -> None:
    """Refuse, in one line, data a classifier cannot be trained and validated on; warn about single classes.

    Fewer than 2 classes (or fewer than 2 with a training image) and an empty validation set are each
    a :class:`DataError`; with ``warn``, a class without training images (it cannot be learnt) or
    without validation images (its accuracy is not measured) is logged by name.
    """
    if len(class_names) < 2:
        found = f"only one class ({class_names[0]})" if class_names else "no class"
        raise DataError(f"{found} in {root}: a classifier needs at least 2 classes (one sub-folder per class)")
    train_counts = [0] * len(class_names)
    val_counts = [0] * len(class_names)
    for label in train_labels:
        train_counts[label] += 1
    for label in val_labels:
        val_counts[label] += 1
    learnable = [name for name, count in zip(class_names, train_counts, strict=True) if count]
    if len(learnable) < 2:
        raise DataError(
            f"only {len(learnable)} of the {len(class_names)} classes in {root} have readable training images: "
            "a classifier needs at least 2"
        )
    if not val_labels:
        if source == "folders":
            raise DataError(f"no validation images: {Path(root) / 'val'} holds no readable photos")
        raise DataError(
            f"no validation images: no class in {root} has a readable photo set aside for validation (each class "
            f"needs at least {MIN_IMAGES_FOR_VAL} photos for a val_fraction split, or provide val/)"
        )
    if warn:
        for name, train_count, val_count in zip(class_names, train_counts, val_counts, strict=True):
            if not train_count:
                logger.warning("class %r has no readable training images: the model cannot learn it", name)
            elif not val_count:
                logger.warning(
                    "class %r has no validation images (it needs at least %d photos): its accuracy is not measured",
                    name,
                    MIN_IMAGES_FOR_VAL,
                )


def _label_then_path(sample: Sample) -> tuple[int, str]:
    return sample.label, sample.path


# A class with fewer photos gets none set aside for validation (it would have none left to train on).
MIN_IMAGES_FOR_VAL = 2


def _num_val(n: int, val_fraction: float) -> int:
    if val_fraction == 0.0 or n < MIN_IMAGES_FOR_VAL:
        return 0
    return min(max(1, round(n * val_fraction)), n - 1)


def list_image_files(class_dir: Path, *, others: Counter[str] | None = None) -> list[str]:
    """Image files under ``class_dir`` (recursively, following links once), hidden entries skipped, sorted.

    The one image listing: class folders here, folders given to ``predict.py`` too. Hidden files and
    folders (``._x.jpg``, ``.ipynb_checkpoints/``) are skipped; symlinked folders are followed, each real
    folder once (a link loop or a folder linked twice is not listed again). ``others`` counts the files
    passed over for their type, by extension (see :func:`log_other_files`)."""
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            if is_image_file(name):
                found.append(os.path.join(dirpath, name))
            elif others is not None:
                others[Path(name).suffix.lower() or "no extension"] += 1
    return sorted(found, key=lambda p: Path(p).relative_to(class_dir).as_posix())


def log_other_files(others: Counter[str], root: str | Path) -> None:
    """One warning for the files under ``root`` skipped for their type (``others``: extension -> count),
    so photos in a format not read here (``.heic``) do not vanish without a word."""
    if not others:
        return
    kinds = ", ".join(f"{count} {suffix}" for suffix, count in sorted(others.items(), key=lambda kv: (-kv[1], kv[0])))
    logger.warning(
        "skipped %d file(s) in %s that are not of an image type read here (%s); read: %s",
        sum(others.values()),
        root,
        kinds,
        " ".join(sorted(IMAGE_EXTENSIONS)),
    )


def _no_images_message(root: Path, folders: list[str]) -> str:
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    loose = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p)]
    if folders:
        where = f"none of the {len(folders)} class sub-folder(s) of {root} holds an image file"
    elif loose:
        where = f"{len(loose)} image file(s) lie directly in {root}; put them in one sub-folder per class"
    else:
        where = f"{root} has no class sub-folders"
    return f"no images found: {where} (looked for {root}/<class>/**/*{{{extensions}}})"
