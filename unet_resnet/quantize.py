"""``export --format openvino``: an OpenVINO IR folder, float or int8 with an accuracy guard.

int8 is post-training static quantization (NNCF) calibrated on the user's own images; the
first convolution and the head stay in float (the layers that quantize worst: raw pixels in,
class logits out). The int8 model is then scored against the float model on the validation
split: mIoU of both, pixel agreement and the per-class IoU change go into ``report.json``
beside the IR. Past ``max_drop`` mIoU points NNCF's accuracy-control mode keeps more layers
in float until the drop fits; if it cannot, the export stops with the numbers and nothing is
written.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet_resnet.accel.fastpath import fold_checked
from unet_resnet.checkpoint import export_metadata, load_checkpoint
from unet_resnet.errors import ConfigError, ExportError, OutputExistsError, UnetResnetError
from unet_resnet.inference.openvino import (
    IR_FILE,
    METADATA_FILE,
    REPORT_FILE,
    OpenVinoModel,
    convert,
    kept_signal_stack,
    load_openvino,
)
from unet_resnet.io import to_float_image

__all__ = ["QuantizationReport", "compare", "export_openvino"]

#: Calibration and validation images are centre-cropped to at most this side (statistics need
#: representative content, not whole scenes in memory).
MAX_SIDE = 512


@dataclass
class QuantizationReport:
    """How the int8 model scored against the float model on the validation split."""

    float_miou: float
    int8_miou: float
    drop_points: float
    max_drop_points: float
    pixel_agreement: float
    per_class: dict[str, dict[str, float | None]]
    calibration: dict[str, Any]
    validation: dict[str, Any]
    float_layers: list[str]
    accuracy_control: bool
    seconds: float
    environment: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"int8 mIoU {100 * self.int8_miou:.2f} vs float {100 * self.float_miou:.2f} "
            f"(drop {self.drop_points:+.2f} points, budget {self.max_drop_points:g}); pixel "
            f"agreement {100 * self.pixel_agreement:.2f}% on {self.validation['images']} "
            f"validation image(s); calibrated on {self.calibration['images']} image(s) of "
            f"{self.calibration['data']} ({self.calibration['split']})",
            f"layers kept in float: {len(self.float_layers)}"
            + (" (accuracy control added some)" if self.accuracy_control else ""),
        ]
        changes = [
            f"{name} {100 * v['change']:+.2f}"
            for name, v in self.per_class.items()
            if v.get("change") is not None
        ]
        if changes:
            lines.append("per-class IoU change (points): " + ", ".join(changes))
        return "\n".join(lines)


def _normalised(image: np.ndarray, mean, std) -> np.ndarray:
    """``1 x C x H x W`` float32 model input, centre-cropped to :data:`MAX_SIDE`."""
    if image.ndim == 2:
        image = image[..., None]
    h, w = image.shape[:2]
    top, left = max(0, (h - MAX_SIDE) // 2), max(0, (w - MAX_SIDE) // 2)
    image = image[top : top + MAX_SIDE, left : left + MAX_SIDE]
    x = to_float_image(np.ascontiguousarray(image)).transpose(2, 0, 1)
    x = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[
        :, None, None
    ]
    return np.ascontiguousarray(x[None], dtype=np.float32)


def _crop_mask(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape[:2]
    top, left = max(0, (h - MAX_SIDE) // 2), max(0, (w - MAX_SIDE) // 2)
    return mask[top : top + MAX_SIDE, left : left + MAX_SIDE]


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k)})


def _open(data, layout: str, split: str, meta):
    from unet_resnet.data.layouts import SplitOptions, open_split

    options = SplitOptions(task=meta.task).for_checkpoint(
        meta.classes, meta.volume, meta.task, meta.split
    )
    dataset = open_split(data, split, layout, options)
    if dataset is None or len(dataset) == 0:
        raise ConfigError(
            f"No '{split}' split in {data} ({layout} layout) for int8 calibration or "
            "validation; name the split with --calibration-split / --split."
        )
    return dataset


def _first_and_last_convolutions(model) -> list[str]:
    convs = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "ConvolutionBackpropData", "GroupConvolution")
    ]
    return [convs[0], convs[-1]] if len(convs) > 1 else convs


def _confusion(pred: np.ndarray, truth: np.ndarray, n: int, ignore: int) -> np.ndarray:
    keep = truth != ignore
    index = truth[keep].astype(np.int64) * n + pred[keep].astype(np.int64)
    return np.bincount(index, minlength=n * n).reshape(n, n)


def _iou(confusion: np.ndarray) -> np.ndarray:
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def compare(reference, candidate, samples, classes) -> dict[str, Any]:
    """Two segmenters on labelled ``(image, mask)`` samples: the mIoU of each
    (``reference_miou``, ``miou``), their pixel agreement, and per class the IoU of each and
    its change (``reference``, ``candidate``, ``change``; None for a class absent from both)."""
    n, ignore = classes.num_classes, classes.ignore_index
    conf_r = np.zeros((n, n), np.int64)
    conf_c = np.zeros((n, n), np.int64)
    agree = total = 0
    for image, mask in samples:
        pr, pc = reference.predict(image), candidate.predict(image)
        conf_r += _confusion(pr, mask, n, ignore)
        conf_c += _confusion(pc, mask, n, ignore)
        agree += int((pr == pc).sum())
        total += pr.size
    iou_r, iou_c = _iou(conf_r), _iou(conf_c)
    per_class = {
        name: {
            "reference": None if np.isnan(r) else float(r),
            "candidate": None if np.isnan(c) else float(c),
            "change": None if np.isnan(r) or np.isnan(c) else float(c - r),
        }
        for name, r, c in zip(classes.names, iou_r, iou_c, strict=True)
    }
    return {
        "reference_miou": float(np.nanmean(iou_r)),
        "miou": float(np.nanmean(iou_c)),
        "pixel_agreement": agree / max(total, 1),
        "per_class": per_class,
    }


def export_openvino(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    precision: str = "fp32",
    calibration: str | os.PathLike | None = None,
    dataset: str = "folder",
    calibration_split: str = "train",
    split: str = "val",
    calibration_size: int = 64,
    max_drop: float = 0.5,
    overwrite: bool = False,
    tolerance: float = 1e-3,
) -> tuple[Path, QuantizationReport | None]:
    """Write an OpenVINO IR folder ``out`` for ``checkpoint``: ``model.xml``/``.bin`` and
    ``unet_resnet.json``; with ``precision="int8"`` quantized on images of ``calibration``
    (a dataset in layout ``dataset``; its ``calibration_split``), scored against the float
    model on its ``split``, and ``report.json``. Returns the folder and the int8 report."""
    if precision not in ("fp32", "int8"):
        raise ConfigError(f"Unknown OpenVINO export precision {precision!r}: fp32 or int8.")
    if precision == "int8" and calibration is None:
        raise ConfigError(
            "--precision int8 needs --calibration DATA: the images it is calibrated on (your "
            "training data) and whose validation split scores it."
        )
    if not max_drop >= 0:
        raise ConfigError(f"Invalid --max-drop {max_drop}: mIoU points, >= 0.")
    ov = load_openvino()
    out = Path(out)
    if (
        Path(checkpoint).resolve() == out.resolve()
        or out.resolve() in Path(checkpoint).resolve().parents
    ):
        raise OutputExistsError(f"--out {out} would replace the checkpoint {checkpoint}.")
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"{out} already exists; pass --overwrite to replace it, or choose another --out."
        )
    start = time.perf_counter()
    model, meta = load_checkpoint(checkpoint)
    c = meta.model_config["in_channels"]
    torch.manual_seed(0)
    folded, _ = fold_checked(model.eval(), torch.randn(1, c, 64, 64))
    float_model = convert(folded, c)
    metadata = export_metadata(meta, "openvino")
    _check_parity(folded, float_model, metadata, c, tolerance)
    ir, report = float_model, None
    if precision == "int8":
        ir, report = _quantize(
            ov, float_model, checkpoint, meta, metadata, calibration, dataset,
            calibration_split, split, calibration_size, max_drop,
        )  # fmt: skip
        report.seconds = time.perf_counter() - start
    metadata = {**metadata, "precision": precision}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir()
        ov.save_model(ir, str(partial / IR_FILE), compress_to_fp16=False)
        (partial / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if report is not None:
            (partial / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out, report


def _check_parity(folded, float_model, metadata, c: int, tolerance: float) -> None:
    check = torch.randn(1, c, 96, 80, generator=torch.Generator().manual_seed(1))
    got = OpenVinoModel(float_model, metadata, precision="fp32")(check)
    with torch.no_grad():
        expected = folded(check)
    diff = float((got - expected).abs().max())
    if not diff <= tolerance:
        raise ExportError(
            f"OpenVINO parity check failed: max abs difference {diff:.3g} between the converted "
            f"and the eager model exceeds {tolerance:g}. Nothing was written."
        )


def _quantize(
    ov, float_model, checkpoint, meta, metadata, calibration, layout, calibration_split, split,
    calibration_size, max_drop,
):  # fmt: skip
    try:
        import nncf
    except ImportError:
        raise ConfigError(
            "int8 quantization needs nncf: pip install 'unet-resnet[openvino]'."
        ) from None
    from unet_resnet.inference import Segmenter

    nncf.set_log_level(logging.WARNING)  # its per-layer notes; the report says what matters
    if meta.task != "multiclass":
        raise ConfigError("int8 export supports multiclass models (one class per pixel).")
    calib = _open(calibration, layout, calibration_split, meta)
    val = _open(calibration, layout, split, meta)
    mean, std = meta.mean, meta.std
    calib_inputs = [
        _normalised(calib.load(i)[0], mean, std) for i in _spread(len(calib), calibration_size)
    ]
    samples = []
    for i in range(len(val)):
        image, mask = val.load(i)
        if mask is not None:
            samples.append((image, mask))
    if not samples:
        raise ConfigError(
            f"The '{split}' split of {calibration} has no labelled images to score int8 on."
        )
    float_layers = _first_and_last_convolutions(float_model)
    quiet = {
        "subset_size": len(calib_inputs),
        "ignored_scope": nncf.IgnoredScope(names=float_layers),
    }
    with kept_signal_stack():  # NNCF makes OpenVINO Cores of its own (see inference.openvino)
        quantized = nncf.quantize(float_model, nncf.Dataset(calib_inputs), **quiet)

    reference = Segmenter.from_checkpoint(
        checkpoint, device="cpu", precision="fp32", backend="torch"
    )

    def scored(ir):
        candidate = Segmenter(
            OpenVinoModel(ir, metadata, precision="int8"),
            classes=meta.classes, mean=mean, std=std, device="cpu",
            image_dtype=meta.image_dtype, task=meta.task,
        )  # fmt: skip
        scores = compare(reference, candidate, samples, meta.classes)
        return {  # in the report's words: float is the reference, int8 the candidate
            "float_miou": scores["reference_miou"],
            "int8_miou": scores["miou"],
            "pixel_agreement": scores["pixel_agreement"],
            "per_class": {
                name: {"float": v["reference"], "int8": v["candidate"], "change": v["change"]}
                for name, v in scores["per_class"].items()
            },
        }

    scores = scored(quantized)
    used_control = False
    drop = 100 * (scores["float_miou"] - scores["int8_miou"])
    if drop > max_drop:
        used_control = True
        quantized = _with_accuracy_control(
            nncf, float_model, calib_inputs, samples, meta, mean, std, float_layers, max_drop
        )
        scores = scored(quantized)
        drop = 100 * (scores["float_miou"] - scores["int8_miou"])
        float_layers = _float_layers(quantized, float_model)
    if drop > max_drop:
        raise ExportError(
            f"int8 lost {drop:.2f} mIoU points on the '{split}' split (float "
            f"{100 * scores['float_miou']:.2f}, int8 {100 * scores['int8_miou']:.2f}; pixel "
            f"agreement {100 * scores['pixel_agreement']:.2f}%), over the budget --max-drop "
            f"{max_drop:g}, even with layers kept in float. Calibrate on more representative "
            "images (--calibration-size, another --calibration-split), raise --max-drop, or "
            "export without --precision int8. Nothing was written."
        )
    report = QuantizationReport(
        float_miou=scores["float_miou"],
        int8_miou=scores["int8_miou"],
        drop_points=drop,
        max_drop_points=max_drop,
        pixel_agreement=scores["pixel_agreement"],
        per_class=scores["per_class"],
        calibration={
            "data": str(calibration),
            "split": calibration_split,
            "images": len(calib_inputs),
        },
        validation={"split": split, "images": len(samples)},
        float_layers=float_layers,
        accuracy_control=used_control,
        seconds=0.0,
        environment={
            "cpu": platform.processor() or platform.machine(),
            "openvino": ov.__version__,
            "nncf": nncf.__version__,
        },
    )
    return quantized, report


def _with_accuracy_control(
    nncf, float_model, calib_inputs, samples, meta, mean, std, float_layers, max_drop
):
    """NNCF's accuracy-control quantization: layers go back to float, most harmful first,
    until the validation mIoU (whole images, our metric) is within ``max_drop`` points."""
    n, ignore = meta.classes.num_classes, meta.classes.ignore_index
    items = [(_normalised(image, mean, std), _crop_mask(mask)) for image, mask in samples]

    def miou(compiled, data) -> float:
        confusion = np.zeros((n, n), np.int64)
        for x, mask in data:
            logits = compiled(x)[0]
            confusion += _confusion(logits[0].argmax(0), mask, n, ignore)
        return float(np.nanmean(_iou(confusion)))

    try:
        with kept_signal_stack():
            return nncf.quantize_with_accuracy_control(
                float_model,
                calibration_dataset=nncf.Dataset(calib_inputs),
                validation_dataset=nncf.Dataset(items),
                validation_fn=miou,
                max_drop=max_drop / 100,
                drop_type=nncf.DropType.ABSOLUTE,
                subset_size=len(calib_inputs),
                ignored_scope=nncf.IgnoredScope(names=float_layers),
            )
    except UnetResnetError:
        raise
    except Exception as exc:  # NNCF's own failures (e.g. no layer left to revert)
        raise ExportError(f"int8 accuracy control failed: {type(exc).__name__}: {exc}") from None


def _float_layers(quantized, float_model) -> list[str]:
    """The convolutions of ``quantized`` whose input is not quantized (kept in float)."""
    fed = {
        op.get_friendly_name()
        for op in quantized.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "ConvolutionBackpropData")
        and any(
            inp.get_source_output().get_node().get_type_name() == "FakeQuantize"
            for inp in op.inputs()
        )
    }
    return [
        op.get_friendly_name()
        for op in quantized.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "ConvolutionBackpropData")
        and op.get_friendly_name() not in fed
    ]
