"""``export_model``: check the request, write the file, verify it against PyTorch, write the sidecar.

The order is the contract: every argument, path and package is checked before the model is loaded
or anything is written (the last check creates the output folder when missing and tries a scratch
file in it); every export ends with a numeric parity check of the written file (run by
the runtime an app would use) against the PyTorch model on the same inputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mobilevit_torch.data.folder import DataError
from mobilevit_torch.export.errors import ConversionError, ExportError, ParityError, require_modules
from mobilevit_torch.export.formats import FORMATS, ExportJob
from mobilevit_torch.export.images import load_images, pick_images, random_inputs, training_split
from mobilevit_torch.export.parity import ParityReport, compare
from mobilevit_torch.export.request import CALIBRATED, DEFAULT_OPSET, check_arguments, check_output_folder
from mobilevit_torch.export.runtime import builtin_operators, open_runner
from mobilevit_torch.export.sidecar import labels_path, sidecar_path, write_sidecar
from mobilevit_torch.export.source import checkpoint_data_root, load_model, resolve_source

logger = logging.getLogger("mobilevit_torch")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    precision: str
    size_bytes: int
    seconds: float
    parity: ParityReport
    sidecar: Path
    labels: Path

    def summary(self) -> str:
        """The one success line every format prints."""
        return (
            f"exported {self.format} {self.precision} -> {self.path} ({self.size_bytes / 1e6:.2f} MB) "
            f"in {self.seconds:.1f} s; parity: {self.parity.summary()}"
        )


def export_model(
    *,
    format: str,
    checkpoint: str | Path | None = None,
    model: str | None = None,
    pretrained: bool | str | Path | None = None,
    num_classes: int | None = None,
    output: str | Path | None = None,
    output_dir: str | Path = ".",
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    img_size: int | None = None,
    dynamic_batch: bool = False,
    data_root: str | Path | None = None,
    calib_images: int = 100,
    check_images: int = 32,
    seed: int = 0,
) -> ExportResult:
    """Export a MobileViT to ``format`` (``onnx`` or ``tflite``) and verify it against PyTorch.

    Args:
        format: ``onnx`` or ``tflite`` (see :data:`~mobilevit_torch.export.formats.FORMATS`).
        checkpoint: a mobilevit-torch training checkpoint; or, instead, ``model`` (``xxs``/``xs``/``s``)
            with ``pretrained`` weights (any layout ``create_model`` reads) and ``num_classes``.
        output: the file to write; by default ``<output_dir>/<model>_<precision>.<suffix>``.
        precision: ``fp32`` (ONNX and TFLite); for TFLite also ``fp16`` (float16 weights where the parity
            bound allows), ``int8_dynamic`` (int8 weights, float activations), ``int8`` (full integer,
            calibrated on ``calib_images`` real images) or ``int8_mixed`` (the same with LayerNorm and
            attention kept float32: closer to PyTorch, and faster on CPU).
        opset: ONNX opset, 18 to 23 (also used for the intermediate ONNX of a TFLite export).
        img_size: input side in pixels (a multiple of 32); by default the model's preprocessing size.
        dynamic_batch: ONNX only: a symbolic batch dimension instead of 1.
        data_root: a folder of real images (one sub-folder per class) for calibration and parity checks;
            by default the checkpoint's training folder when it exists here, else random inputs
            (which ``int8`` and ``int8_mixed`` refuse).
        calib_images, check_images: how many images calibrate int8, and how many the parity check runs.
        seed: picks the images (and the random inputs without a folder).

    Raises:
        ExportError: a bad argument, a missing file, folder or package (before any work).
        ConversionError: a converter failed, or the file or a sidecar could not be written (disk full,
            permission denied); either way the output path is left as it was (an earlier export there,
            set aside while this one was written, is put back).
        ParityError: a float export's logits differ from PyTorch's by more than the tolerance
            (1e-4 for fp32, 1e-2 for fp16). The file and its sidecars are kept for inspection as
            ``<stem>.parity-failed<suffix>`` beside the output path, which is left as it was.
    """
    # -- check everything before any work --------------------------------------------------------
    fmt = FORMATS[
        check_arguments(
            format=format,
            precision=precision,
            opset=opset,
            img_size=img_size,
            dynamic_batch=dynamic_batch,
            calib_images=calib_images,
            check_images=check_images,
            seed=seed,
            output=output,
            data_root=data_root,
            checkpoint=checkpoint,
            model=model,
            pretrained=pretrained,
            num_classes=num_classes,
        ).name
    ]
    source = resolve_source(checkpoint=checkpoint, model=model, pretrained=pretrained, num_classes=num_classes)
    implicit_root = data_root is None and (found := checkpoint_data_root(source)) is not None
    if implicit_root:
        logger.info("real images from the checkpoint's data folder %s", found)
        data_root = found
    if precision in CALIBRATED and data_root is None:
        raise ExportError(
            f"precision={precision} is calibrated on real images: pass data.root=PATH (a folder of photos)"
        )
    require_modules(fmt.modules, purpose=f"format={fmt.name}")
    path = Path(output) if output is not None else Path(output_dir) / f"{source.model_name}_{precision}{fmt.suffix}"
    path = path.expanduser()
    check_output_folder(path, create=True)  # the last check: it creates the folder when missing

    # -- load the model and the images -----------------------------------------------------------
    net = load_model(source)
    preprocessing = net.preprocessing.with_input_size(img_size) if img_size else net.preprocessing
    size = preprocessing.input_size
    class_names = list(net.class_names or [f"class_{i}" for i in range(net.num_classes)])
    calibration, check = None, None
    if data_root is not None:
        try:
            picked = pick_images(
                data_root,
                calib_images=calib_images,
                check_images=check_images,
                seed=seed,
                **training_split(source.training_config),
            )
        except DataError as error:
            if not implicit_root or precision in CALIBRATED:
                raise ExportError(f"data.root: {error}") from None
            logger.warning("not using the checkpoint's data folder: %s", error)
        else:
            if net.class_names and picked.class_names != class_names:
                logger.warning(
                    "data.root %s holds the classes %s, not the model's %s: the check images are held out "
                    "only from a split of this folder (give the folder of class sub-folders the model trained on)",
                    picked.root, _few(picked.class_names), _few(class_names),
                )  # fmt: skip
            if precision in CALIBRATED and not picked.held_out:
                raise ExportError(
                    f"data.root: {data_root} holds one image per class, too few for precision={precision}: "
                    "its int8 ranges would come from the very images it is checked on; give a folder with "
                    "at least two images per class (ideally the training photos)"
                )
            if not picked.held_out:
                logger.warning("%s is too small to hold images out: checking on the calibration images", data_root)
            check, _ = load_images(picked.check, preprocessing)
            if precision in (*CALIBRATED, "fp16"):  # int8 ranges, fp16's choice of weights: training images
                calibration, _ = load_images(picked.calibration, preprocessing)
                if 0 < len(calibration) < calib_images and precision in CALIBRATED:
                    logger.warning(
                        "calibrating on %d images, not calib_images=%d: all %s has for "
                        "calibration; int8 ranges from few photos may clip brighter or darker ones",
                        len(calibration), calib_images, picked.root,
                    )
                elif len(calibration):
                    purpose = "calibrating" if precision in CALIBRATED else "choosing the float16 weights"
                    logger.info("%s on %d images from %s", purpose, len(calibration), picked.root)
            if len(check) == 0 or (calibration is not None and len(calibration) == 0):
                raise ExportError(f"data.root: no readable images in {data_root}")
    real = check is not None
    if check is None:
        check = random_inputs(check_images, preprocessing, seed=seed)

    # -- write, verify, describe: a failure here leaves `path` as it was ------------------------------
    logger.info("exporting %s to %s (%s, %d px)", source.describe(), path, precision, size)
    earlier = set_aside(path)  # an earlier export at `path` comes back if this one fails
    written = path  # where the file ends up: a file that fails its parity check never takes `path`
    try:
        started = time.perf_counter()
        job = ExportJob(net, path, precision, size, opset, dynamic_batch, sample=check, calibration=calibration)
        converter = fmt.write(job)
        seconds = time.perf_counter() - started

        if fmt.name == "tflite":
            converter["tflite_ops"] = builtin_operators(path)
        runner = open_runner(path)
        report = compare(pytorch_logits(net, check), runner(check.numpy()), precision=precision, real_images=real)
        if not report.passed:  # kept to inspect, under a name no one takes for a working export
            written = parity_failed_path(path)
            remove_export(written)
            path.replace(written)
        sidecar, labels = write_sidecar(
            written,
            format_name=fmt.name,
            precision=precision,
            model_name=source.model_name,
            source=source.describe(),
            io=runner.describe(),
            preprocessing=preprocessing,
            class_names=class_names,
            parity=report,
            converter={**converter, "seconds": round(seconds, 2)},
        )
        result = ExportResult(written, fmt.name, precision, written.stat().st_size, seconds, report, sidecar, labels)
    except BaseException as error:  # a half-written file must not pass for an export (Ctrl-C included)
        removed = remove_export(path) + (remove_export(written) if written != path else [])
        restored = put_back(earlier)
        if isinstance(error, OSError):  # disk full, permission denied, a file removed under us
            where = error.filename or f"the export in {path.parent}"
            left = f"; removed the partial {', '.join(removed)}" if removed else ""
            kept = f"; the earlier {restored} is back in place" if restored else ""
            raise ConversionError(f"could not write {where} ({error.strerror or error}){left}{kept}") from error
        if restored:
            logger.info("the earlier %s is back in place", restored)
        raise
    if not report.passed:
        restored = put_back(earlier)
        kept = f"; the earlier {restored} is back in place" if restored else ""
        raise ParityError(
            f"{path} does not match PyTorch: {report.summary()}. Kept for inspection as {written.name} "
            f"(with its .json and .labels.txt){kept}"
        )
    discard(earlier)  # the new export replaces it
    if not report.meets_aim:
        logger.warning("%s: top-1 agreement below the aim for %s: %s", path.name, precision, report.summary())
    return result


def _few(names: list[str], shown: int = 5) -> str:
    """``names`` for a message: the first ``shown`` of a long list, and how many more."""
    listed = ", ".join(names[:shown])
    return f"[{listed}, … {len(names) - shown} more]" if len(names) > shown else f"[{listed}]"


@torch.no_grad()
def pytorch_logits(model: nn.Module, images: Tensor, *, batch_size: int = 16) -> np.ndarray:
    """The reference: the eval-mode PyTorch model's float32 logits, ``[N, classes]``."""
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()


def parity_failed_path(path: Path) -> Path:
    """Where an export that failed its parity check is kept: ``model.onnx`` -> ``model.parity-failed.onnx``."""
    return path.with_name(f"{path.stem}.parity-failed{path.suffix}")


def export_files(path: Path) -> tuple[Path, Path, Path]:
    """The files one export writes: the exported file, its sidecar and its labels."""
    return path, sidecar_path(path), labels_path(path)


def set_aside(path: Path) -> list[tuple[Path, Path]]:
    """Rename the files of an earlier export at ``path`` to hidden ``.<name>.previous`` files beside them,
    so that a failed export can put them back; the ``(aside, original)`` pairs."""
    moved = []
    for file in export_files(path):
        if file.is_file():
            aside = file.with_name(f".{file.name}.previous")
            try:
                file.replace(aside)
            except OSError as error:
                put_back(moved)
                raise ConversionError(f"could not set the earlier {file} aside ({error.strerror or error})") from None
            moved.append((aside, file))
    return moved


def put_back(moved: list[tuple[Path, Path]]) -> str:
    """Undo :func:`set_aside`; the restored file names, joined (empty when there were none)."""
    restored = []
    for aside, file in moved:
        try:
            aside.replace(file)
        except OSError:
            logger.warning("could not put the earlier %s back; it is kept as %s", file.name, aside)
            continue
        restored.append(file.name)
    return ", ".join(restored)


def discard(moved: list[tuple[Path, Path]]) -> None:
    """Delete what :func:`set_aside` kept, once the new export stands."""
    for aside, _ in moved:
        aside.unlink(missing_ok=True)


def remove_export(path: Path) -> list[str]:
    """Delete the exported file at ``path`` and its sidecars, as far as they exist; the names removed."""
    removed = []
    for file in export_files(path):
        try:
            file.unlink()
        except FileNotFoundError:
            continue
        except OSError:
            logger.warning("could not remove the partial file %s", file)
            continue
        removed.append(file.name)
    return removed
