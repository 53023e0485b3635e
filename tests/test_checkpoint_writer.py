"""Checkpoints written in the background hold the values of the moment they were handed over."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mobilevit_torch.checkpoint import host_copy, load_checkpoint, model_payload, save_checkpoint
from mobilevit_torch.registry import create_model
from mobilevit_torch.training.checkpoint import CheckpointWriteError, CheckpointWriter
from tests.conftest import REPO


def _trained_xxs() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model("mobilevit_xxs", num_classes=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_background_checkpoint_is_the_state_at_save_time(tmp_path: Path) -> None:
    model, optimizer = _trained_xxs()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    with CheckpointWriter() as writer:
        writer.save(
            tmp_path / "last.pt",
            {**model_payload(model, ["a", "b", "c"]), "optimizer": optimizer.state_dict(), "epoch": 1},
        )
        # Training goes on at once and changes every tensor in place.
        model(torch.randn(2, 3, 64, 64)).sum().backward()
        optimizer.step()
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.add_(1) if tensor.is_floating_point() else tensor.add_(7)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["epoch"] == 1 and saved["class_names"] == ["a", "b", "c"]
    assert saved["state_dict"].keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(saved["state_dict"][key], value), key
    assert torch.equal(saved["optimizer"]["state"][0]["exp_avg"], expected_moments)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # no temporary files left


def test_background_checkpoints_are_written_in_order(tmp_path: Path) -> None:
    with CheckpointWriter(max_pending=1) as writer:
        for epoch in range(5):
            payload = {"format": "mobilevit-torch", "epoch": epoch, "w": torch.full((3,), epoch)}
            writer.save(tmp_path / "last.pt", payload)
        writer.wait()
        assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["w"], torch.full((3,), 4))


def test_a_failed_background_write_is_raised_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the run folder should be")
    writer = CheckpointWriter()
    writer.save(blocker / "last.pt", {"format": "mobilevit-torch", "epoch": 1})
    with pytest.raises(CheckpointWriteError, match="could not write the checkpoint .*not_a_folder"):
        writer.close()
    assert "could not write the checkpoint" in caplog.text and "not_a_folder" in caplog.text
    # The writer is usable again after a failure has been reported.
    with CheckpointWriter() as writer:
        writer.save(tmp_path / "ok.pt", {"format": "mobilevit-torch", "epoch": 2})
    assert load_checkpoint(tmp_path / "ok.pt")["epoch"] == 2


def test_host_copy_clones_cpu_tensors_and_keeps_structure() -> None:
    tensor = torch.arange(4.0)
    payload = {"a": [tensor, (tensor, 3)], "b": "text", "c": None}
    copied = host_copy(payload)
    assert copied["a"][1][1] == 3 and copied["b"] == "text" and copied["c"] is None
    assert isinstance(copied["a"][1], tuple)
    tensor.add_(1)
    assert torch.equal(copied["a"][0], torch.arange(4.0)) and torch.equal(copied["a"][1][0], torch.arange(4.0))
    assert host_copy(payload, clone=False)["a"][0].data_ptr() == tensor.data_ptr()  # the same storage


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_background_checkpoint_of_gpu_tensors_is_on_the_cpu(tmp_path: Path) -> None:
    weights = torch.arange(1_000_000, dtype=torch.float32, device="cuda")
    with CheckpointWriter() as writer:
        writer.save(tmp_path / "gpu.pt", {"format": "mobilevit-torch", "w": weights})
        weights.mul_(0)  # after the snapshot: must not reach the file
    saved = load_checkpoint(tmp_path / "gpu.pt")["w"]
    assert saved.device.type == "cpu"
    assert torch.equal(saved, torch.arange(1_000_000, dtype=torch.float32))
    # save_checkpoint on its own also stores CPU tensors.
    save_checkpoint(tmp_path / "direct.pt", {"format": "mobilevit-torch", "w": weights})
    assert torch.load(tmp_path / "direct.pt", map_location="cuda", weights_only=True)["w"].sum() == 0
    assert torch.load(tmp_path / "direct.pt", weights_only=True)["w"].device.type == "cpu"


def test_a_failed_write_ends_a_command_with_one_line(tmp_path: Path) -> None:
    """What train.py shows when a checkpoint cannot be written: one line, exit status 1 (a fresh process:
    the entry points' error handler shuts logging down)."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    code = (
        "import sys\n"
        "from mobilevit_torch.cli import user_errors\n"
        "from mobilevit_torch.training.checkpoint import CheckpointWriter\n"
        "@user_errors\n"
        "def command():\n"
        "    with CheckpointWriter() as writer:\n"
        "        writer.save(sys.argv[1], {'format': 'mobilevit-torch', 'epoch': 1})\n"
        "command()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(blocker / "last.pt")], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 1, done.stderr
    assert "error: could not write the checkpoint" in done.stderr and "not_a_folder" in done.stderr
    assert "Traceback" not in done.stderr
