"""The side-by-side benchmark (benchmarks/bench_models.py) runs end to end on the CPU and reports what README quotes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.train_helpers import make_folder


def _benchmark(monkeypatch: pytest.MonkeyPatch, name: str):
    """A module of benchmarks/ (``bench_models`` and the modules it is made of), imported as the scripts do."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module(name)


def test_bench_models_cpu_table_json_and_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("timm")
    bench = _benchmark(monkeypatch, "bench_models")
    args = [
        "--device", "cpu", "--quick", "--img-size", "64", "--cpu-batch", "2",
        "--impl", "ours,ours-fnorm,ours-lpln,ours-fused,ours-fused-ref,timm",
        "--cpu-modes", "fp32,fp32+recipe", "--phases", "train,infer,latency",
        "--json", str(tmp_path / "bench.json"), "--markdown", str(tmp_path / "bench.md"),
    ]  # fmt: skip
    report = bench.main(args)

    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["headline"] == report["headline"]
    results = {(r["impl"], r["mode"], r["phase"]): r for r in saved["results"]}
    for impl in ("ours", "timm"):
        for phase in ("train", "infer", "latency"):
            row = results[(impl, "fp32", phase)]
            assert row["status"] == "ok" and row["value"] > 0, row
            assert len(row["samples_s"]) >= 2
    # train.py's step (TrainStep with mixup, clipping, EMA) runs on the CPU too.
    recipe = results[("ours", "fp32+recipe", "train")]
    assert recipe["status"] == "ok" and recipe["value"] > 0
    # The fused-norm row is training only (its inference is ours exactly); on the CPU it falls back to ours.
    for impl in ("ours-fnorm", "ours-lpln"):  # train.py's GPU switches
        assert results[(impl, "fp32", "train")]["status"] == "ok"
        assert (impl, "fp32", "infer") not in results
    # The folded model has no training row; its latency and throughput are ratios against timm's.
    assert ("ours-fused", "fp32", "train") not in results
    fused = results[("ours-fused", "fp32", "latency")]
    timm_latency = results[("timm", "fp32", "latency")]["value"]
    assert fused["ratio_vs_timm"] == pytest.approx(fused["value"] / timm_latency)
    assert fused["page_faults_per_iter"] is None or fused["page_faults_per_iter"] >= 0
    # Peak memory on the CPU (glibc): a training step holds gradients, AdamW state and the activations
    # autograd saves, far more than an inference forward; the folded model holds fewer maps.
    if _benchmark(monkeypatch, "bench_timing").heap_allocated() is not None:
        peaks = {key: row["peak_mib"] for key, row in results.items()}
        assert all(value is not None and value > 0 for value in peaks.values()), peaks
        for impl in ("ours", "timm"):
            assert peaks[(impl, "fp32", "train")] > 2 * peaks[(impl, "fp32", "infer")], peaks

    table = (tmp_path / "bench.md").read_text()
    assert "| impl | mode |" in table and "latency b1 ms" in table and "| ours-fused | fp32 |" in table
    assert "train peak MiB" in table
    out = capsys.readouterr().out
    assert "cpu latency eager vs eager" in out
    assert "oneDNN kernels, ours-fused / ours-fused-ref" in out  # the A/B of the CPU kernels
    assert "fused BatchNorm+SiLU kernels, ours-fnorm / ours" in out
    assert "LayerNorm in autocast's dtype, ours-lpln / ours-fnorm" in out


def test_headline_best_vs_best_leaves_out_modes_timm_has_no_result_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's compiled case skipped (e.g. past --time-budget): ours compiled must not be set against timm eager."""
    bench = _benchmark(monkeypatch, "bench_cases")
    eager, compiled = bench.parse_mode("fp32", "default"), bench.parse_mode("fp32+compile", "default")

    def case(impl: str, mode, seconds: float | None):
        samples = [] if seconds is None else [seconds]
        status = "ok" if samples else "skipped"
        return bench.Case("cpu", impl, mode, "infer", batch=10, samples_s=samples, status=status)

    cases = [case("ours", eager, 0.1), case("ours", compiled, 0.02), case("timm", eager, 0.05)]
    cases.append(case("timm", compiled, None))
    lines = _benchmark(monkeypatch, "bench_report").headline(cases, "fp32")
    best = next(line for line in lines if "infer best vs best" in line)
    assert "ours [fp32] 100.0 img/s / timm [fp32] 200.0 img/s = 0.50" in best, lines
    assert not any("best vs timm compiled" in line for line in lines)  # nothing of timm's compiled to compare


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checkpoint_cost_times_both_ways(tmp_path: Path) -> None:
    times = _module("checkpoint_cost").main(["--device", "cpu", "--repeats", "2", "--out", str(tmp_path)])
    assert set(times) == {"save_checkpoint", "writer.save", "writer, written"}
    assert all(len(v) == 2 and min(v) > 0 for v in times.values())
    assert (tmp_path / "sync.pt").stat().st_size == (tmp_path / "background.pt").stat().st_size


def test_train_e2e_runs_train_py_and_reads_its_records(tmp_path: Path) -> None:
    """Two train.py runs on a generated folder (CPU, seconds each): the table and JSON come back."""
    e2e = _module("train_e2e")
    root = make_folder(tmp_path / "photos", per_class=6, odd_files=False)
    out = tmp_path / "e2e"
    e2e.main([
        "--root", str(root), "--epochs", "2", "--out", str(out),
        "--variant", "base=", "--variant", "noema=recipe.ema_decay=0",
        "--", "device=cpu", "data.img_size=64", "data.batch_size=4", "max_steps_per_epoch=2",
        "tensorboard=false", f"data.cache_dir={tmp_path / 'cache'}",
    ])  # fmt: skip
    rows = json.loads((out / "train_e2e.json").read_text())
    assert [r["variant"] for r in rows] == ["base", "noema"] and all(r["status"] == "ok" for r in rows)
    for row in rows:
        assert row["epochs"] == 2 and row["loop_s"] > 0 and row["first_epoch_s"] > 0
        assert row["captures"] == 0  # no CUDA graphs on the CPU
    table = (out / "train_e2e.md").read_text()
    assert "| base |" in table and "| noema |" in table


def test_train_e2e_reads_capture_times_from_train_log() -> None:
    e2e = _module("train_e2e")
    log = (
        "2026-11-22 INFO captured the training step as a CUDA graph (batch 128 at 256 px): 7.5 s of warm-up"
        " updates (cuDNN's algorithm search, compilation), 0.8 s to capture\n"
        "2026-11-22 INFO epoch 1/30 | train loss 1.2\n"
        "2026-11-22 INFO captured a forward pass as a CUDA graph (input 166x3x256x256): 1.5 s of warm-up calls,"
        " 0.2 s to capture\n"
    )
    times = e2e.capture_times(log)
    assert times["captures"] == 2
    assert times["capture_warmup_s"] == pytest.approx(9.0) and times["capture_s"] == pytest.approx(1.0)
    assert e2e.capture_times("no graphs here")["captures"] == 0


def test_conv_census_times_every_convolution_of_a_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each convolution a forward runs, by kind, with the stem's input gradient left out of the step."""
    spec = importlib.util.spec_from_file_location("conv_census", REPO / "benchmarks" / "conv_census.py")
    assert spec is not None and spec.loader is not None
    census = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "conv_census", census)  # its dataclass looks its module up
    spec.loader.exec_module(census)
    from mobilevit_torch import create_model
    from mobilevit_torch.blocks import InvertedResidual, MobileViTBlock

    report = census.main(
        ["--device", "cpu", "--variant", "xxs", "--batch", "2", "--img-size", "64", "--repeats", "1",
         "--warmup", "0", "--json", str(tmp_path / "census.json")]
    )  # fmt: skip
    assert json.loads((tmp_path / "census.json").read_text()) == json.loads(json.dumps(report))
    model = create_model("mobilevit_xxs")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    vit_blocks = sum(isinstance(m, MobileViTBlock) for m in model.modules())
    calls = {(group["kind"], group["pass"]): group["count"] for group in report["by_kind"]}
    assert calls[("depthwise 3x3", "forward")] == len(blocks) == 7
    # expansion + projection per MV2 block, and the final 1x1 (the MobileViT blocks' 1x1s run as matmuls)
    assert calls[("pointwise 1x1", "forward")] == 2 * len(blocks) + 1
    assert calls[("full 3x3", "forward")] == 2 * vit_blocks  # local and fusion convolutions
    assert calls[("stem 3x3", "forward")] == calls[("stem 3x3", "weight grad")] == 1
    assert ("stem 3x3", "input grad") not in calls
    assert report["total_ms"] == pytest.approx(sum(row["ms"] for row in report["rows"])) and report["total_ms"] > 0

    stem = next(row for row in report["rows"] if row["kind"] == "stem 3x3" and row["pass"] == "forward")
    # 2 x 3 x 64 x 64 in, 16 x 3 x 3 x 3 weights, 2 x 16 x 32 x 32 out, float32
    assert stem["bytes"] == (2 * 3 * 64 * 64 + 16 * 3 * 9 + 2 * 16 * 32 * 32) * 4
    assert stem["flops"] == 2 * 2 * 32 * 32 * 16 * 3 * 9


@pytest.mark.parametrize(
    ("mode", "graphed"),
    [
        ("bf16+cl", False),
        ("bf16+cl+compile", False),
        ("bf16+cl+graph", True),
        ("bf16+cl+graph+recipe", True),
        ("bf16+cl+compile+graph", True),
        ("bf16+cl+compile:reduce-overhead", True),
        ("bf16+cl+compile:max-autotune", True),
    ],
)
def test_which_modes_replay_cuda_graphs(monkeypatch: pytest.MonkeyPatch, mode: str, graphed: bool) -> None:
    """The modes whose CUDA peak memory is taken over the capture too (a replay allocates nothing); the peak
    itself is measured on a GPU only."""
    bench = _benchmark(monkeypatch, "bench_cases")
    assert bench.uses_cuda_graphs(bench.parse_mode(mode, "default")) is graphed


def test_the_kernel_rows_are_the_folded_model_with_switches_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ours-fused-mv2`` / ``ours-fused-k`` differ from ``ours-fused`` only by the kernel switches
    (their A/B pairs in the summary): MV2 blocks (7 in XXS), then also the dense 3x3 units (7)."""
    from mobilevit_torch.blocks import InvertedResidual
    from mobilevit_torch.layers import ConvNormAct

    bench = _benchmark(monkeypatch, "bench_cases")
    switches = {}
    for impl in ("ours-fused", "ours-fused-mv2", "ours-fused-k"):
        modules = list(bench.build_model(impl, "xxs", False).modules())
        switches[impl] = (
            sum(m.mv2_kernel for m in modules if isinstance(m, InvertedResidual)),
            sum(m.conv_kernel for m in modules if isinstance(m, ConvNormAct)),
        )
    assert switches == {"ours-fused": (0, 0), "ours-fused-mv2": (7, 0), "ours-fused-k": (7, 7)}
    assert not {"ours-fused-mv2", "ours-fused-k"} & set(bench.TRAINABLE)


def test_kernel_tiles_times_every_block_shape(tmp_path: Path) -> None:
    """The tile benchmark finds XXS's 13 distinct kernel shapes (7 MV2 blocks, the stem, 3 local and
    3 fusion convolutions, one of them a repeat) and times each both ways; in Triton's interpreter here."""
    from mobilevit_torch.layers.triton_support import TRITON_AVAILABLE

    if not TRITON_AVAILABLE:
        pytest.skip("triton is not installed")
    out = tmp_path / "tiles.json"
    command = [sys.executable, "benchmarks/kernel_tiles.py", "--device", "cpu", "--batch", "1", "--img-size", "32"]
    command += ["--tiles", "16x4", "--warmup", "0", "--repeats", "1", "--iters", "1", "--json", str(out)]
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    names = [row["block"] for row in rows]
    assert len(names) == 13 and sum(n.startswith("MV2") for n in names) == 6  # two of the 7 are alike
    assert all(row["torch_ms"] > 0 and row["kernel_ms"]["16x4"] > 0 for row in rows)
    assert "| block | torch ms | 16x4 ms |" in result.stdout
