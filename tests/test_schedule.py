"""The learning-rate schedule's values, computed by hand."""

from __future__ import annotations

import math

import pytest

from mobilevit_torch.training.schedule import learning_rate


def test_warmup_then_cosine_to_min_lr() -> None:
    settings = {"base_lr": 0.002, "total_steps": 110, "warmup_steps": 10, "min_lr": 2e-5}
    lr = {step: learning_rate(step, **settings) for step in range(111)}
    assert lr[0] == pytest.approx(0.002 / 10)  # the first update already moves
    assert lr[4] == pytest.approx(0.002 * 5 / 10)
    assert lr[9] == pytest.approx(0.002) and lr[10] == pytest.approx(0.002)  # the peak, then the cosine starts
    assert lr[60] == pytest.approx(2e-5 + 0.5 * (0.002 - 2e-5))  # half way through the decay
    assert lr[35] == pytest.approx(2e-5 + 0.5 * (0.002 - 2e-5) * (1 + math.cos(math.pi / 4)))
    assert lr[110] == pytest.approx(2e-5)  # ends at min_lr, not at 0
    assert all(lr[s] >= lr[s + 1] for s in range(10, 110))  # never rises after the warmup


def test_constant_schedule_and_no_warmup() -> None:
    assert [learning_rate(s, base_lr=0.002, total_steps=50, schedule="constant") for s in (0, 25, 49)] == [0.002] * 3
    assert learning_rate(0, base_lr=1.0, total_steps=100) == pytest.approx(1.0)
    assert learning_rate(3, base_lr=1.0, total_steps=100, warmup_steps=4, schedule="constant") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        learning_rate(5, base_lr=1.0, total_steps=10, schedule="step")
