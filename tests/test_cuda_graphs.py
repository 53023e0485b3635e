"""CUDA graphs: the replayed training step and forward compute what the eager code computes.

Needs a CUDA GPU (skipped elsewhere). Dropout is off so both sides draw no random masks; the
comparison is in fp32 with TF32 off, so the only differences are kernel-order rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobilevit_torch import create_model
from mobilevit_torch.graphed import GraphedForward
from mobilevit_torch.layers.fused_norm import set_fused_norm
from mobilevit_torch.training.config import RecipeConfig, TrainConfig
from mobilevit_torch.training.ema import ModelEma
from mobilevit_torch.training.loop import train
from mobilevit_torch.training.mixing import Mixer
from mobilevit_torch.training.optimizer import build_optimizer
from mobilevit_torch.training.pipeline import CachedTrainBatches
from mobilevit_torch.training.step import TrainStep
from tests.train_helpers import make_folder, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _run(graphs: bool, sizes: list[int] | None, updates: int = 6, accum: int = 1, fused_norm: bool = False):
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = create_model("mobilevit_xxs", num_classes=5, drop_rate=0.0, dropout=0.0).to(device)
    set_fused_norm(model, fused_norm)
    recipe = RecipeConfig(mixup=0.2, cutmix=1.0, clip_grad=1.0, ema_decay=0.99, accum_steps=accum)
    optimizer = build_optimizer(model, TrainConfig(recipe=recipe), device, capturable=graphs)
    ema = ModelEma(model, decay=recipe.ema_decay)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (48, 3, 72, 72), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, 5, (48,), generator=generator).to(device)
    source = CachedTrainBatches(
        images, labels, batch_size=8, img_size=64, pre=model.preprocessing, recipe=recipe, seed=0, sizes=sizes
    )
    mixer = Mixer(recipe.mixup, recipe.cutmix, seed=0)
    step = TrainStep(
        model,
        model,
        optimizer,
        materialize=source.materialize,
        num_classes=5,
        label_smoothing=0.1,
        mixer=mixer,
        clip_grad=recipe.clip_grad,
        ema=ema,
        amp_dtype=None,
        scaler=torch.amp.GradScaler("cuda", enabled=False),
        memory_format=torch.channels_last,
        device=device,
        cuda_graphs=graphs,
    )
    batches = source.epoch(0)
    mixes = mixer.epoch_params(0, source.steps_per_epoch).to(device)
    for update in range(updates):
        group = [next(batches) for _ in range(accum)]
        step(group, mixes[update * accum : (update + 1) * accum], lr=1e-3 * (update + 1))
    torch.cuda.synchronize()
    return model, ema, {k: v.item() for k, v in step.sums.items()}, step


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten() for t in tensors])


@pytest.mark.parametrize(
    ("sizes", "accum", "fused_norm"),
    [(None, 1, False), ([64, 96], 1, False), (None, 2, False), (None, 1, True)],
    ids=["one-size", "multiscale", "accum2", "fused-norm"],
)
def test_graphed_train_step_matches_eager(sizes: list[int] | None, accum: int, fused_norm: bool) -> None:
    """Same losses, and the weights and EMA move the same way.

    Weight-by-weight equality is not expected: Adam divides by the gradient's running RMS, so a
    near-zero gradient whose rounding differs can flip a weight's update. The displacement of the
    whole weight vector from its start must agree in direction and length; a replay that reused a
    stale batch, learning rate or EMA weight would miss both by far. With ``fused_norm`` the graphed
    side also runs BatchNorm + SiLU as the fused Triton kernels (the eager side stays PyTorch's)."""
    torch.manual_seed(0)
    start = _flat(create_model("mobilevit_xxs", num_classes=5, drop_rate=0.0, dropout=0.0).parameters()).cuda()
    updates = 6 // accum  # one epoch of the 48-image cache: 6 batches of 8
    eager, eager_ema, eager_sums, _ = _run(False, sizes, updates, accum)
    graphed, graphed_ema, graphed_sums, step = _run(True, sizes, updates, accum, fused_norm)
    assert len(step._graphs) == 1 if sizes is None else len(step._graphs) >= 1
    assert graphed_sums["seen"] == eager_sums["seen"]
    assert graphed_sums["loss"] == pytest.approx(eager_sums["loss"], rel=1e-3)
    assert graphed_sums["correct"] == pytest.approx(eager_sums["correct"], abs=2)
    for a, b in (
        (eager.parameters(), graphed.parameters()),
        (eager_ema.module.parameters(), graphed_ema.module.parameters()),
    ):
        moved_eager, moved_graphed = _flat(a) - start, _flat(b) - start
        cosine = torch.nn.functional.cosine_similarity(moved_eager, moved_graphed, dim=0)
        assert cosine > 0.97, float(cosine)
        assert float(moved_graphed.norm() / moved_eager.norm()) == pytest.approx(1.0, abs=0.03)
    for (name, a), b in zip(eager.named_buffers(), graphed.buffers(), strict=True):  # BatchNorm statistics
        assert torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-3), name
    assert graphed_ema.updates == eager_ema.updates


def test_graphed_forward_matches_eager_for_each_shape() -> None:
    model = create_model("mobilevit_xxs", num_classes=5).cuda().eval()
    graphed = GraphedForward(model)
    for batch in (4, 3, 4):
        x = torch.randn(batch, 3, 64, 64, device="cuda")
        with torch.inference_mode():
            expected = model(x)
        got = graphed(x).clone()
        assert torch.allclose(got, expected, atol=1e-5), batch
    assert len(graphed._graphs) == 2


def test_random_branches_draw_anew_on_every_replay() -> None:
    """Stochastic depth and dropout draw their masks on the GPU, so a replayed graph draws new ones
    (a mask drawn on the host would be frozen into the graph at capture)."""
    model = create_model("mobilevit_xxs", num_classes=5, drop_path_rate=0.5, dropout=0.0, drop_rate=0.0).cuda()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        model(x)  # warm-up outside the capture, as CUDA graphs want
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = model(x)
    replays = []
    for _ in range(3):
        graph.replay()
        replays.append(out.clone())
    assert not torch.equal(replays[0], replays[1]) and not torch.equal(replays[1], replays[2])
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))  # no draws in eval


def test_train_with_and_without_graphs_agree(tmp_path: Path) -> None:
    """train() end to end (cache, mixup, EMA, checkpoints) with and without graphs: the same curves."""
    folder = make_folder(tmp_path / "photos", per_class=16)
    losses = {}
    for graphs, fused_norm in ((False, False), (True, False), (True, True)):
        config = tiny_config(
            tmp_path,
            folder,
            device="cuda",
            amp=False,
            cuda_graphs=graphs,
            fused_norm=fused_norm,
            channels_last=fused_norm,  # the kernels need it; the other two runs stay NCHW as before
            epochs=2,
            # Several validation batches (of one padded shape): one graph for the model, one for the EMA.
            **{"model.drop_rate": 0.0, "model.dropout": 0.0, "recipe.mixup": 0.2, "data.eval_batch_size": 5},
        )
        run = tmp_path / f"run_{graphs}_{fused_norm}"
        assert train(config, run)["epochs"] == 2
        assert (run / "best.pt").exists()
        log = (run / "train.log").read_text()
        assert log.count("captured a forward pass as a CUDA graph") == (2 if graphs else 0)
        assert ("fused BatchNorm+SiLU kernels: on (32 units)" in log) is fused_norm
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses[graphs, fused_norm] = [(r["train_loss"], r["val_loss"]) for r in records]
    for variant in ((True, False), (True, True)):
        for eager, other in zip(losses[False, False], losses[variant], strict=True):
            assert other == pytest.approx(eager, rel=5e-3), variant


@pytest.mark.parametrize("search", [False, True])  # not "benchmark": pytest-benchmark's fixture name
def test_cudnn_benchmark_setting_is_applied(tmp_path: Path, search: bool) -> None:
    folder = make_folder(tmp_path / "photos", per_class=4)
    config = tiny_config(tmp_path, folder, device="cuda", cudnn_benchmark=search, epochs=1)
    train(config, tmp_path / "run")
    assert torch.backends.cudnn.benchmark is search
