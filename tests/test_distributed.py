"""The collective helpers of the training loop in a real two-process gloo group on the CPU."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mobilevit_torch.training.distributed import DistInfo, check_same_weights


def _rank(rank: int, store: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, world_size=2)
        torch.manual_seed(0)
        same = torch.nn.Linear(4, 3)
        check_same_weights(same.parameters(), info)  # equal everywhere: nothing to say
        with torch.no_grad():
            same.bias[rank] += 1.0  # each rank moves another element of one tensor
        try:
            check_same_weights(same.parameters(), info)
            outcome = "no error"
        except RuntimeError as error:
            outcome = str(error)
        Path(results, f"rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def test_ranks_with_different_weights_are_told(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        assert (tmp_path / f"rank{rank}.txt").read_text() == (
            "the 2 training processes hold different weights (1 of 2 tensors): their gradients were not averaged"
        )
    assert check_same_weights([torch.zeros(2)], DistInfo()) is None  # one process: nothing to compare
