"""The training step's pieces on the CPU: mixing as timm defines it, soft targets, EMA, graph refusal."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mobilevit_torch import create_model
from mobilevit_torch.training.ema import ModelEma
from mobilevit_torch.training.mixing import Mixer, smoothed_targets, soft_cross_entropy
from mobilevit_torch.training.pipeline import Batch
from mobilevit_torch.training.step import TrainStep


def test_smoothed_targets_and_soft_cross_entropy_match_torch() -> None:
    logits, labels = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])
    targets = smoothed_targets(labels, 5, 0.1)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    assert targets[0, 0] == pytest.approx(0.9 + 0.02)
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert soft_cross_entropy(logits, targets) == pytest.approx(expected.item(), rel=1e-6)


def test_mixup_row_mixes_each_image_with_its_mirror() -> None:
    x, targets = torch.rand(4, 3, 8, 8), smoothed_targets(torch.tensor([0, 1, 2, 3]), 4, 0.0)
    params = torch.tensor([0.7, 0.0, 0.0, 0.0, 0.0, 0.0])
    mixed, mixed_targets = Mixer.apply(x, targets, params)
    assert torch.allclose(mixed, 0.7 * x + 0.3 * x.flip(0))
    assert torch.allclose(mixed_targets[0], torch.tensor([0.7, 0.0, 0.0, 0.3]))


def test_cutmix_row_pastes_the_mirror_inside_the_box_and_weights_targets_by_area() -> None:
    x, targets = torch.rand(2, 3, 8, 8), smoothed_targets(torch.tensor([0, 1]), 2, 0.0)
    params = torch.tensor([0.0, 1.0, 0.25, 0.75, 0.0, 0.5])  # rows 2-5, columns 0-3: a quarter of the image
    mixed, mixed_targets = Mixer.apply(x, targets, params)
    assert torch.equal(mixed[:, :, 2:6, 0:4], x.flip(0)[:, :, 2:6, 0:4])
    assert torch.equal(mixed[:, :, :2], x[:, :, :2]) and torch.equal(mixed[:, :, :, 4:], x[:, :, :, 4:])
    assert torch.allclose(mixed_targets[0], torch.tensor([0.75, 0.25]))


def test_mixer_draws_are_a_function_of_seed_and_epoch() -> None:
    mixer = Mixer(0.2, 1.0, seed=3)
    a, b = mixer.epoch_params(5, 40), mixer.epoch_params(5, 40)
    assert torch.equal(a, b) and not torch.equal(a, mixer.epoch_params(6, 40))
    assert set(a[:, 1].tolist()) == {0.0, 1.0}  # both mixup and cutmix steps
    cut = a[a[:, 1] == 1]
    assert bool(((cut[:, 2] <= cut[:, 3]) & (cut[:, 4] <= cut[:, 5])).all())
    assert bool(((a[:, 0] >= 0) & (a[:, 0] <= 1)).all())
    with pytest.raises(ValueError):
        Mixer(0.0, 0.0, seed=0)


def test_ema_update_is_the_ramped_average() -> None:
    model = torch.nn.Linear(3, 2)
    ema = ModelEma(model, decay=0.999)
    start = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    decay = min(0.999, 2 / 11)
    assert torch.allclose(ema.module.weight, decay * start + (1 - decay) * model.weight)
    assert ema.updates == 1


def test_ema_decay_caps_the_ramp() -> None:
    """Once the ramp (1 + n) / (10 + n) passes the configured decay, the decay is what each update keeps."""
    model = torch.nn.Linear(3, 2)
    ema = ModelEma(model, decay=0.5)
    with torch.no_grad():
        model.weight.zero_()
        ema.module.weight.fill_(1.0)
    for _ in range(20):
        ema.update(model)
    assert ema.weight.item() == pytest.approx(0.5)  # the ramp alone would be 1 - 21/30 = 0.3
    kept = math.prod(min(0.5, (1 + n) / (10 + n)) for n in range(1, 21))  # what is left of the start
    assert torch.allclose(ema.module.weight, torch.full((2, 3), kept), rtol=1e-4)


def test_graphs_refused_with_a_reason_where_impossible() -> None:
    assert "not on a CUDA device" in TrainStep.graphs_possible(
        torch.device("cpu"), distributed=False, scaler_enabled=False
    )
    assert "several processes" in TrainStep.graphs_possible(
        torch.device("cuda"), distributed=True, scaler_enabled=False
    )
    assert "fp16" in TrainStep.graphs_possible(torch.device("cuda"), distributed=False, scaler_enabled=True)
    assert TrainStep.graphs_possible(torch.device("cuda"), distributed=False, scaler_enabled=False) is None
    model = create_model("mobilevit_xxs", num_classes=5)
    with pytest.raises(ValueError, match="not on a CUDA device"):
        cpu_step(model, torch.optim.AdamW(model.parameters()), cuda_graphs=True)


def cpu_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, **options: object) -> TrainStep:
    """A float32 TrainStep on the CPU over batches of ``x`` and ``y`` tensors: no mixing, clipping or EMA unless
    ``options`` say so."""
    settings: dict = {
        "materialize": lambda b: (b.tensors["x"], b.tensors["y"]),
        "num_classes": model.num_classes,
        "label_smoothing": 0.0,
        "mixer": None,
        "clip_grad": 0.0,
        "ema": None,
        "amp_dtype": None,
        "scaler": torch.amp.GradScaler("cpu", enabled=False),
        "memory_format": torch.contiguous_format,
        "device": torch.device("cpu"),
        "cuda_graphs": False,
    }
    return TrainStep(model, model, optimizer, **(settings | options))


@pytest.mark.parametrize("clip_grad", [0.0, 0.05])  # 0.05: below the gradient's norm, clipping is in play
def test_accumulated_micro_batches_make_the_whole_batchs_update(clip_grad: float) -> None:
    """accum 2 x 4 images makes the update of one batch of 8: the gradient of the mean loss over all 8, clipped
    once. Plain SGD, so a gradient scaled wrong shows in the weights (AdamW's update barely depends on its scale);
    eval mode, so BatchNorm's statistics and dropout are the same however the images are grouped."""
    start = create_model("mobilevit_xxs", num_classes=3).eval()
    x, y = torch.rand(8, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    results = []
    for parts in ([slice(0, 8)], [slice(0, 4), slice(4, 8)]):
        model = copy.deepcopy(start)
        step = cpu_step(model, torch.optim.SGD(model.parameters(), lr=0.0), label_smoothing=0.1, clip_grad=clip_grad)
        step([Batch(64, {"x": x[part], "y": y[part]}) for part in parts], None, lr=1.0)
        results.append((model.state_dict(), {name: value.item() for name, value in step.sums.items()}))
    (whole, whole_sums), (accumulated, accumulated_sums) = results
    assert not torch.equal(whole["classifier.weight"], start.state_dict()["classifier.weight"])  # it did update
    torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-6)
    assert accumulated_sums == pytest.approx(whole_sums, rel=1e-5)
