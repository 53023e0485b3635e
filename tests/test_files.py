"""Atomic writes: complete files only, the permissions of an ordinary new file, no leftovers on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mobilevit_torch.checkpoint import save_checkpoint
from mobilevit_torch.data.folder import DatasetSplit, Sample
from mobilevit_torch.files import atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _open_mode(tmp_path: Path) -> int:
    """What plain open() gives a new file in this process (the umask applied to 0o666)."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    return _mode(probe)


def test_atomic_write_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    with atomic_write(target) as file:
        file.write("first")
    assert target.read_text() == "first"
    assert _mode(target) == _open_mode(tmp_path), "not mkstemp's owner-only mode"

    with pytest.raises(RuntimeError), atomic_write(target) as file:
        file.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt", "probe"], "the temporary file is gone"

    with atomic_write(target, "wb", sync=True, suffix=".part") as file:
        file.write(b"second")
    assert target.read_bytes() == b"second"


def test_checkpoints_and_splits_get_the_permissions_of_other_new_files(tmp_path: Path) -> None:
    expected = _open_mode(tmp_path)
    checkpoint = save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    split = DatasetSplit(train=[Sample(str(tmp_path / "a.jpg"), 0)], val=[], class_names=["a"], source="split").to_json(
        tmp_path / "split.json"
    )
    for path in (checkpoint, split):
        assert _mode(path) == expected, f"{path.name}: {oct(_mode(path))}"
    if os.name == "posix" and expected & 0o044:
        assert _mode(checkpoint) & 0o044, "others can read a checkpoint wherever they can read new files"


def test_a_checkpoint_save_that_fails_leaves_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash or a full disk in the middle of saving last.pt must not cost the last good one."""
    import torch

    from mobilevit_torch.checkpoint import load_checkpoint

    path = save_checkpoint(tmp_path / "last.pt", {"format": "mobilevit-torch", "epoch": 1, "w": torch.ones(3)})

    def disk_full(payload: object, file: object, *args: object, **kwargs: object) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"format": "mobilevit-torch", "epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


class _RunsCode:
    """Unpickling this touches a file: what a hostile .pt could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_holding_code_is_refused_unrun(tmp_path: Path) -> None:
    """evaluate, predict, export and resume read checkpoints without unpickling arbitrary objects."""
    import torch

    from mobilevit_torch.checkpoint import CheckpointError, read_checkpoint

    marker = tmp_path / "ran"
    payload = {"format": "mobilevit-torch", "model_name": "mobilevit_xxs", "state_dict": {}, "x": _RunsCode(marker)}
    torch.save(payload, tmp_path / "hostile.pt")
    with pytest.raises(CheckpointError, match="cannot read .*hostile.pt"):
        read_checkpoint(tmp_path / "hostile.pt")
    assert not marker.exists()
