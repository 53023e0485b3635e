"""The training loop. Read it top to bottom: setup, data, model, optimizer, resume, one loop, report.

``train(config, run_dir)`` takes a plain :class:`TrainConfig` (``train.py`` builds it from Hydra)
and writes everything into ``run_dir``: checkpoints ``last.pt``/``best.pt``, ``metrics.csv``/
``metrics.jsonl``, TensorBoard events, ``split.json``, plots and ``summary.json``.
Photos to batches is ``data_setup.py``; one update, ``step.py``; the optimizer and learning rates,
``optimizer.py``; device, precision and kernels, ``device.py``; a validation pass, ``validation.py``;
restoring a checkpoint's state, ``resume.py``; log lines, ``run_log.py``; the closing summary,
``summary.py``; stopping early (divergence, signals), ``stopping.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mobilevit_torch.checkpoint import model_payload
from mobilevit_torch.graphed import GraphedForward
from mobilevit_torch.registry import create_model
from mobilevit_torch.training.checkpoint import CheckpointWriter, read_training_checkpoint
from mobilevit_torch.training.config import ConfigError, TrainConfig
from mobilevit_torch.training.data_setup import build_data, prepare_split
from mobilevit_torch.training.device import amp_precision, set_training_kernels, training_device
from mobilevit_torch.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    check_same_weights,
    init_distributed,
    shutdown,
)
from mobilevit_torch.training.ema import ModelEma
from mobilevit_torch.training.mixing import Mixer
from mobilevit_torch.training.optimizer import build_optimizer, update_plan
from mobilevit_torch.training.resume import NO_BEST, NO_SUMS, restore, resume_changes, rng_state
from mobilevit_torch.training.run_log import RunLogger, add_log_file, epoch_line, remove_log_files
from mobilevit_torch.training.step import TrainStep
from mobilevit_torch.training.stopping import StopSignal, TrainingDiverged, TrainingInterrupted, diverged_message
from mobilevit_torch.training.summary import finished_run, holds_run, report
from mobilevit_torch.training.validation import evaluate

logger = logging.getLogger("mobilevit_torch.train")


def train(config: TrainConfig, run_dir: str | Path) -> dict[str, Any]:
    config.validate()
    device = training_device(config.device)
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    package_logger = logging.getLogger("mobilevit_torch")
    level = package_logger.level
    if not info.is_main:  # one process tells the progress; the others only their warnings
        package_logger.setLevel(logging.WARNING)
    try:
        return _train(config, Path(run_dir), device, info)
    finally:
        package_logger.setLevel(level)
        remove_log_files()
        shutdown(info)


def _train(config: TrainConfig, run_dir: Path, device: torch.device, info: DistInfo) -> dict[str, Any]:
    started = time.perf_counter()
    resume = read_training_checkpoint(config.resume) if config.resume else None
    changes: list[str] = []  # settings a resume takes from config instead of the checkpoint
    if resume is not None:
        run_dir = Path(config.resume).expanduser().resolve().parent  # a resumed run continues in its own folder
        changes = resume_changes(resume["config"], dataclasses.asdict(config))
        if int(resume["epoch"]) >= config.epochs:
            return finished_run(run_dir, int(resume["epoch"]), config.epochs, say=info.is_main)
    elif broadcast_flag(holds_run(run_dir), info, device):
        raise ConfigError(
            f"run directory {run_dir} already holds a run; resume it with resume={run_dir / 'last.pt'} "
            "or choose another run directory (hydra.run.dir; with -m, hydra.sweep.dir)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        add_log_file(run_dir / "train.log")
        for line in changes:
            logger.warning(line)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    random.seed(config.seed)

    # ---- data: folder -> split (its classes size the model's head) ---------------------------
    split, skipped = prepare_split(config, run_dir, info, reuse=resume is not None)
    class_names = split.class_names

    # ---- model -------------------------------------------------------------------------------
    model = create_model(
        config.model.name,
        pretrained=(config.pretrained or False) if resume is None else False,  # resuming loads the checkpoint's
        num_classes=len(class_names),
        drop_rate=config.model.drop_rate,
        dropout=config.model.dropout,
        drop_path_rate=config.model.drop_path_rate,
    )
    model.class_names = list(class_names)
    model.preprocessing = model.preprocessing.with_input_size(config.data.img_size)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)

    # ---- batches: decoded cache (or per-image loader), in the model's preprocessing ----------
    data = build_data(config, split, skipped, model.preprocessing, device, info)

    # ---- optimizer, precision, EMA -----------------------------------------------------------
    steps_per_epoch, updates_per_epoch, lr_at = update_plan(config, data.train_batches.steps_per_epoch)
    accum = config.recipe.accum_steps

    amp_dtype = amp_precision(config.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    graphs_blocked = TrainStep.graphs_possible(device, distributed=info.enabled, scaler_enabled=scaler.is_enabled())
    use_graphs = config.cuda_graphs and graphs_blocked is None
    optimizer = build_optimizer(model, config, device, capturable=use_graphs)
    ema = ModelEma(model, decay=config.recipe.ema_decay) if config.recipe.ema_decay > 0 else None
    recipe = config.recipe
    mixer = Mixer(recipe.mixup, recipe.cutmix, config.seed) if recipe.mixup > 0 or recipe.cutmix > 0 else None

    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        train_model = torch.compile(train_model)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark  # the search costs more than it wins: NOTES
        logger.info(
            "CUDA graphs: %s",
            "on (one graph per update)" if use_graphs else f"off ({graphs_blocked or 'cuda_graphs=false'})",
        )
    set_training_kernels(model, config, device, amp_dtype)

    # ---- resume ------------------------------------------------------------------------------
    start_epoch, start_step, history, best, carried = 0, 0, [], dict(NO_BEST), dict(NO_SUMS)
    if resume is not None:
        start_epoch, start_step, history, best, carried = restore(
            resume, model, optimizer, scaler, ema, class_names, config
        )
        logger.info("resumed from %s at epoch %d, step %d", config.resume, start_epoch, start_step)
    best_confusion: Tensor | None = resume.get("best_confusion") if resume is not None else None
    train_step = TrainStep(
        model,
        train_model,
        optimizer,
        materialize=data.train_batches.materialize,
        num_classes=len(class_names),
        label_smoothing=recipe.label_smoothing,
        mixer=mixer,
        clip_grad=recipe.clip_grad,
        ema=ema,
        amp_dtype=amp_dtype,
        scaler=scaler,
        memory_format=memory_format,
        device=device,
        cuda_graphs=use_graphs,
        distributed=info.enabled,
    )
    run_log = (
        RunLogger(run_dir, tensorboard=config.tensorboard, resume=resume is not None, history=history)
        if info.is_main
        else None
    )
    if info.is_main:
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))

    def checkpoint(epoch: int, step_in_epoch: int, sums: dict[str, float]) -> dict[str, Any]:
        return {
            **model_payload(model, class_names),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "epoch_sums": sums,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema else None,
            "rng": rng_state(device),
            "config": dataclasses.asdict(config),
            "history": list(run_log.history if run_log else history),
            "best": dict(best),
            # the summary's matrix, also where best.pt is not beside it (last.pt copied elsewhere)
            "best_confusion": best_confusion.cpu() if best_confusion is not None else None,
        }

    # ---- the loop ----------------------------------------------------------------------------
    stop = StopSignal()
    loop_start = time.perf_counter()  # setup (data, cache, model) ends here
    images_trained = 0.0
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    # Validation forwards replay as CUDA graphs too (one per batch shape; they autocast themselves).
    eval_forward = GraphedForward(model, amp_dtype) if use_graphs else None
    ema_forward = GraphedForward(ema.module, amp_dtype) if use_graphs and ema is not None else None
    eval_autocast = contextlib.nullcontext() if use_graphs else autocast
    validate = functools.partial(
        evaluate,
        num_classes=len(class_names),
        device=device,
        autocast=eval_autocast,
        memory_format=memory_format,
        info=info,
    )
    epochs_this_run = 0
    writer = CheckpointWriter()  # checkpoints are written in the background while training goes on
    try:
        for epoch in range(start_epoch, config.epochs):
            if start_step == 0:  # dropout draws: replayable from (seed, epoch)
                epoch_seed = config.seed * 1_000_003 + epoch * 7919 + info.rank
                torch.manual_seed(epoch_seed)
            train_model.train()
            train_step.reset_sums(**carried)
            seen_before = carried["seen"] * info.world_size  # this epoch's images trained before a resume
            sums = train_step.sums
            bar = tqdm(
                total=steps_per_epoch,
                initial=start_step,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=not (info.is_main and config.progress),
                leave=False,
                dynamic_ncols=True,
            )
            epoch_start = time.perf_counter()
            batches = data.train_batches.epoch(epoch, start_step)
            mixes = mixer.epoch_params(epoch, steps_per_epoch).to(device) if mixer else None  # [steps, 6]
            for step in range(start_step, steps_per_epoch, accum):  # one optimizer update per `accum` batches
                lr = lr_at(epoch * updates_per_epoch + step // accum)
                group = [next(batches) for _ in range(accum)]
                train_step(group, mixes[step : step + accum] if mixes is not None else None, lr)
                bar.update(accum)
                done = step + accum
                log_point = done // config.log_every > step // config.log_every  # crossed a multiple
                if log_point:  # a host sync: only every log_every steps
                    running = (sums["loss"] / sums["seen"]).item()
                    if not math.isfinite(running):
                        message = diverged_message(epoch, done - 1, running, run_dir, config.recipe.clip_grad)
                        raise TrainingDiverged(message)
                    bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.2e}")
                stop_now = stop.signum is not None
                if info.enabled:  # ranks must agree; ask the others only at the log points (a sync)
                    stop_now = log_point and broadcast_flag(stop_now, info, device)
                if stop_now:
                    barrier(info)
                    if info.is_main:
                        writer.save(
                            run_dir / "last.pt", checkpoint(epoch, done, {k: v.item() for k, v in sums.items()})
                        )
                        writer.wait()
                    raise TrainingInterrupted(
                        f"interrupted at epoch {epoch + 1}, step {done}: saved {run_dir / 'last.pt'}; "
                        f"continue with resume={run_dir / 'last.pt'}",
                        stop.signum or signal.SIGTERM,
                    )
            bar.close()
            start_step = 0
            carried = dict(NO_SUMS)

            # ---- end of epoch: reduce across ranks, check, evaluate, log, checkpoint ----------
            totals = all_reduce_sum(torch.stack([sums["loss"], sums["correct"], sums["seen"]]), info).tolist()
            check_same_weights(model.parameters(), info)  # before rank 0 checkpoints them as the run's
            train_time = time.perf_counter() - epoch_start
            train_loss = totals[0] / max(totals[2], 1)
            if not math.isfinite(train_loss):
                message = diverged_message(epoch, steps_per_epoch - 1, train_loss, run_dir, config.recipe.clip_grad)
                raise TrainingDiverged(message)
            val_loss, val_acc, confusion = validate(model, data.val_batches(), forward=eval_forward)
            ema_acc, ema_confusion = None, None
            if ema is not None:
                _, ema_acc, ema_confusion = validate(ema.module, data.val_batches(), forward=ema_forward)
            images_trained += totals[2] - seen_before
            record = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_acc": totals[1] / max(totals[2], 1),
                "val_loss": val_loss,
                "val_acc": val_acc,
                "ema_val_acc": ema_acc,
                "lr": lr_at((epoch + 1) * updates_per_epoch - 1),  # its last update (also if resumed after it)
                "images_per_s": (totals[2] - seen_before) / train_time,  # this invocation's steps only
                "epoch_time_s": time.perf_counter() - epoch_start,
                "val_time_s": time.perf_counter() - epoch_start - train_time,
            }
            improved_model = val_acc > best["val_acc"]
            improved_ema = ema_acc is not None and ema_acc > max(best["val_acc"], val_acc)
            if improved_model or improved_ema:
                use_ema = bool(improved_ema)
                best = {
                    "val_acc": ema_acc if use_ema else val_acc,
                    "epoch": epoch + 1,
                    "weights": "ema" if use_ema else "model",
                }
                best_confusion = ema_confusion if use_ema else confusion
            if info.is_main:
                assert run_log is not None
                run_log.log_epoch(record)
                logger.info(epoch_line(record, config.epochs))
                writer.save(run_dir / "last.pt", checkpoint(epoch + 1, 0, dict(carried)))
                if improved_model or improved_ema:
                    best_model = ema.module if best["weights"] == "ema" and ema is not None else model
                    writer.save(
                        run_dir / "best.pt",
                        {
                            **model_payload(best_model, class_names),
                            "epoch": epoch + 1,
                            "best": dict(best),
                            "confusion": best_confusion,
                            "config": dataclasses.asdict(config),  # no optimizer/RNG: weights, not a resume point
                        },
                    )
            epochs_this_run += 1
            if config.stop_after and epochs_this_run >= config.stop_after and epoch + 1 < config.epochs:
                logger.info(
                    "stopping after %d epoch(s) as asked (stop_after); resume with resume=%s",
                    epochs_this_run,
                    run_dir / "last.pt",
                )
                break
    finally:
        try:
            writer.close()  # every checkpoint handed over is on disk before train() returns or raises
        finally:
            stop.restore()
            if run_log is not None:
                run_log.close()

    # ---- report ------------------------------------------------------------------------------
    timing = {
        "wall_time_s": time.perf_counter() - started,
        "setup_time_s": loop_start - started,
        # The whole loop (steps, validation, checkpoints, logs) over the training images it went through.
        "loop_time_s": (loop_s := time.perf_counter() - loop_start),
        "loop_images_per_s": images_trained / loop_s if loop_s > 0 else 0.0,
    }
    history = run_log.history if run_log else []
    return report(config, run_dir, data, class_names, history, best, best_confusion, timing, write=info.is_main)
