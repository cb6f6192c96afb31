"""``evaluate``: scores of a Segmenter on a labelled split, with the training metric code.

Images are predicted at full resolution through the Segmenter, so tiling and TTA apply exactly
as in ``predict``; the confusion matrix is accumulated over the whole split.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unet_resnet.calibration import calibration_stats, plot_reliability, rescale
from unet_resnet.data.classes import DataError
from unet_resnet.data.datasets import PairedSegmentationDataset
from unet_resnet.inference.formats.base import image_quality
from unet_resnet.inference.segmenter import Segmenter
from unet_resnet.io import atomic_path
from unet_resnet.metrics import build_metrics
from unet_resnet.uncertainty import image_iou, spearman

__all__ = [
    "calibrate",
    "evaluate",
    "format_scores",
    "plot_confusion_matrix",
    "write_calibration",
    "write_cases_csv",
    "write_scores_json",
]


def evaluate(
    segmenter: Segmenter,
    dataset: PairedSegmentationDataset,
    *,
    progress: bool = True,
    hd95: bool = False,
    tolerance: float = 2.0,
    reliability: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """mIoU, mean Dice, pixel accuracy, per-class IoU/Dice/precision/recall, confusion matrix.

    On volumes (:class:`~unet_resnet.data.layouts.nifti.NiftiSliceDataset`) each case is reassembled
    from its slices and scored per case and per structure in 3D with its voxel spacing (mm):
    Dice, IoU, HD95 and surface Dice at ``tolerance`` mm, with the empty-case rule of
    :func:`~unet_resnet.metrics.case_scores` (a miss scores Dice 0 and HD95 = the volume's
    diagonal, and is counted). ``scores["cases"]`` holds one row per case and structure,
    ``scores["per_case"]`` the mean / std / median over cases and the miss and false-alarm
    counts. ``hd95=True`` also puts the per-case mean HD95 in ``per_class[name]["hd95"]`` and
    ``mean_hd95``.

    One-class-per-pixel models also get ``scores["calibration"]``: ECE, ACE (equal-mass bins),
    MCE and class-wise ECE of the probabilities as the segmenter gives them (its
    ``temperature`` applied), ``ece_uncalibrated`` at temperature 1, and a reliability
    diagram written to ``reliability`` when given.

    ``scores["quality"]`` checks the per-image quality estimate ``predict`` writes (the
    expected mIoU, :class:`~unet_resnet.uncertainty.QualityMeter`) against each image's true
    mIoU (over the classes its mask or prediction holds): Spearman's rank correlation, and
    both per image.
    """
    classes = segmenter.classes
    metrics = build_metrics(
        segmenter.task.name,
        classes.num_classes,
        ignore_index=classes.ignore_index,
        class_names=classes.names,
        thresholds=segmenter.thresholds,
    )
    overlapping = segmenter.task.overlapping

    def new_stats():
        return calibration_stats(
            classes.num_classes, overlapping=overlapping, ignore_index=classes.ignore_index
        )

    stats, raw = new_stats(), None
    if segmenter.temperature != 1.0:
        raw = new_stats()
    inverse = _inverse(segmenter.temperature)
    volumes: dict[int, tuple[list, list]] = {}
    estimated: list[float] = []
    observed: list[float] = []
    volumetric = hasattr(dataset, "spacings") and hasattr(dataset, "index")
    for index in tqdm(range(len(dataset)), desc="evaluate", disable=not progress):
        image, mask = dataset.load(index)
        if mask is None:
            continue
        bad = classes.check_values(mask) if mask.ndim == 2 else np.array([])
        if bad.size:
            raise DataError(
                f"Labels of sample {index} hold values {bad[:8].tolist()} outside the "
                f"checkpoint's {classes.num_classes} classes ({', '.join(classes.names)}; "
                f"ignore_index {classes.ignore_index}): the dataset and the checkpoint do not "
                "have the same classes."
            )
        probs, labels, estimate = image_quality(segmenter, image)
        true_iou = image_iou(
            labels,
            mask,
            classes.num_classes,
            ignore_index=classes.ignore_index,
            overlapping=segmenter.task.overlapping,
        )
        if not math.isnan(true_iou):
            estimated.append(estimate["quality"])
            observed.append(true_iou)
        stats.update(probs, mask)
        if raw is not None:
            raw.update(rescale(probs, inverse, overlapping=overlapping), mask)
        del probs
        metrics.update(
            torch.from_numpy(labels.astype(np.int64))[None], torch.from_numpy(mask)[None]
        )
        if volumetric:
            preds, truths = volumes.setdefault(dataset.index[index][0], ([], []))
            preds.append(labels)
            truths.append(mask)
    scores = metrics.compute()
    scores["quality"] = {
        "spearman": spearman(estimated, observed),
        "images": len(observed),
        "estimated": [round(v, 6) for v in estimated],
        "observed": [round(v, 6) for v in observed],
    }
    if stats.pixels:
        uncalibrated = raw or stats
        scores["calibration"] = {
            "temperature": segmenter.temperature,
            **stats.summary(),
            "ece_uncalibrated": uncalibrated.ece(),
        }
        if reliability is not None:
            plot_reliability(
                raw or stats,
                stats if raw is not None else None,
                reliability,
                title=f"temperature {_shown(segmenter.temperature)}",
            )
    if volumetric:
        _add_cases(scores, volumes, dataset, tolerance)
        if hd95:
            for name, entry in scores["per_case"].items():
                scores["per_class"][name]["hd95"] = entry["hd95"]["mean"]
            means = [entry["hd95"]["mean"] for entry in scores["per_case"].values()]
            scores["mean_hd95"] = float(np.mean(means)) if means else float("nan")
    return scores


def calibrate(segmenter: Segmenter, dataset, *, split: str = "val") -> dict[str, Any]:
    """Fit the temperature of a segmenter on a labelled ``dataset`` (its probabilities at
    temperature 1, whatever the segmenter's own): the temperature minimising the NLL of a
    bounded pixel sample (:meth:`~unet_resnet.calibration.CalibrationStats.fit_temperature`;
    multilabel models: one per class, binary NLL), and ECE/ACE/MCE before and after.
    Returns the report (``temperature``, ``split``, ``pixels``,
    ``sampled_pixels``, ``before``, ``after``) with the two statistics under ``"_stats"``
    (for a reliability diagram)."""
    from unet_resnet.errors import ConfigError

    classes = segmenter.classes
    overlapping = segmenter.task.overlapping
    stats = calibration_stats(
        classes.num_classes, overlapping=overlapping, ignore_index=classes.ignore_index
    )
    inverse = _inverse(segmenter.temperature)
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        if mask is not None:
            probs = segmenter.image_probabilities(image)
            stats.update(rescale(probs, inverse, overlapping=overlapping), mask)
    if stats.pixels == 0:
        raise ConfigError(f"No labelled pixels in the {split} split to calibrate on.")
    temperature = stats.fit_temperature()
    before, after = stats.at_temperature(1.0), stats.at_temperature(temperature)
    return {
        "temperature": temperature,
        "split": split,
        "pixels": stats.pixels,
        "sampled_pixels": before.pixels,
        "before": before.summary(),
        "after": after.summary(),
        "_stats": (before, after),
    }


def write_calibration(report: dict[str, Any], json_path, plot_path) -> None:
    """The report of :func:`calibrate` as JSON, and its reliability diagram."""
    before, after = report["_stats"]
    public = {k: v for k, v in report.items() if k != "_stats"}
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(_clean(public), indent=2) + "\n")
    plot_reliability(before, after, plot_path, title=f"temperature {_shown(report['temperature'])}")


def _inverse(temperature):
    """What undoes a temperature (per class for multilabel models)."""
    if isinstance(temperature, list):
        return [1 / t for t in temperature]
    return 1 / temperature


def _shown(temperature) -> str:
    if isinstance(temperature, list):
        return ", ".join(f"{t:.3g}" for t in temperature)
    return f"{temperature:.3g}"


def _add_cases(scores: dict[str, Any], volumes, dataset, tolerance: float) -> None:
    from unet_resnet.metrics import case_scores, summarize_cases
    from unet_resnet.volumes import case_name

    names = list(scores["per_class"])
    rows = []
    for v, (preds, truths) in volumes.items():
        pred = np.stack(preds, axis=dataset.axis)
        truth = np.stack(truths, axis=dataset.axis)
        ignored = truth == dataset.classes.ignore_index
        for k, name in enumerate(names[1:], start=1):
            row = case_scores(
                (pred == k) & ~ignored, truth == k, dataset.spacings[v], tolerance=tolerance
            )
            rows.append({"case": case_name(dataset.pairs[v][0]), "structure": name, **row})
    scores["cases"] = rows
    scores["per_case"] = summarize_cases(rows)
    scores["nsd_tolerance_mm"] = tolerance


def write_cases_csv(scores: dict[str, Any], path: str | os.PathLike) -> None:
    """One row per case and structure: dice, iou, hd95 (mm), nsd, outcome."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", "structure", "dice", "iou", "hd95_mm", "nsd", "outcome"])
    for row in scores.get("cases", []):
        writer.writerow(
            [row["case"], row["structure"], f"{row['dice']:.6f}", f"{row['iou']:.6f}",
             f"{row['hd95']:.4f}", f"{row['nsd']:.6f}", row["outcome"]]
        )  # fmt: skip
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def format_scores(scores: dict[str, Any]) -> str:
    """A text table: the headline numbers, then one row per class."""

    def pct(value: float) -> str:
        return "   n/a" if math.isnan(value) else f"{100 * value:6.2f}"

    lines = [
        f"mIoU {pct(scores['miou'])}   mean Dice {pct(scores['mean_dice'])}   "
        f"pixel accuracy {pct(scores['pixel_accuracy'])}",
        "",
        f"{'class':<20} {'IoU':>6} {'Dice':>6} {'prec.':>6} {'recall':>6} {'pixels':>10}",
    ]
    calibration = scores.get("calibration")
    if calibration:

        def num(value: float) -> str:
            return "n/a" if math.isnan(value) else f"{value:.4f}"

        lines.insert(
            1,
            f"calibration: ECE {num(calibration['ece'])} (temperature 1: "
            f"{num(calibration['ece_uncalibrated'])})   ACE {num(calibration['ace'])}   "
            f"MCE {num(calibration['mce'])}   temperature {_shown(calibration['temperature'])}",
        )
    quality = scores.get("quality")
    if quality and quality.get("images"):
        rho = quality["spearman"]
        lines.insert(
            1,
            f"quality estimate vs true per-image mIoU: Spearman "
            f"{'n/a' if rho is None or math.isnan(rho) else f'{rho:.3f}'} over "
            f"{quality['images']} images",
        )
    for name, row in scores["per_class"].items():
        lines.append(
            f"{name[:20]:<20} {pct(row['iou'])} {pct(row['dice'])} {pct(row['precision'])} "
            f"{pct(row['recall'])} {row['support']:>10}"
        )
    if scores.get("per_case"):
        lines += [
            "",
            f"Per case ({len({r['case'] for r in scores['cases']})} cases; mean ± std "
            f"[median]; NSD at {scores['nsd_tolerance_mm']:g} mm; a miss scores Dice 0 and "
            "HD95 = the volume diagonal):",
            f"{'structure':<16} {'Dice':>22} {'HD95 mm':>22} {'NSD':>22} {'miss':>5} {'false+':>6}",
        ]
        for name, entry in scores["per_case"].items():

            def cell(metric: str, scale: float = 1.0, entry=entry) -> str:
                m = entry[metric]
                text = (
                    f"{scale * m['mean']:.2f} ± {scale * m['std']:.2f} [{scale * m['median']:.2f}]"
                )
                return f"{text:>22}"

            lines.append(
                f"{name[:16]:<16} {cell('dice', 100)} {cell('hd95')} {cell('nsd', 100)} "
                f"{entry['misses']:>5} {entry['false_alarms']:>6}"
            )
    return "\n".join(lines)


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def write_scores_json(scores: dict[str, Any], path: str | os.PathLike) -> None:
    """JSON: top-level ``miou``, ``mean_dice``, ``pixel_accuracy``, ``per_class``; NaN as null."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(scores), indent=2) + "\n")


def plot_confusion_matrix(scores: dict[str, Any], path: str | os.PathLike) -> None:
    """Row-normalised confusion matrix as a PNG (rows: truth, columns: prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores["per_class"])
    cm = np.asarray(scores["confusion_matrix"], dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color
                )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
