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

from unet_resnet.data.classes import DataError
from unet_resnet.data.datasets import PairedSegmentationDataset
from unet_resnet.inference.segmenter import Segmenter
from unet_resnet.io import atomic_path
from unet_resnet.metrics import SegmentationMetrics

__all__ = ["evaluate", "format_scores", "plot_confusion_matrix", "write_scores_json"]


def evaluate(
    segmenter: Segmenter,
    dataset: PairedSegmentationDataset,
    *,
    progress: bool = True,
    hd95: bool = False,
) -> dict[str, Any]:
    """mIoU, mean Dice, pixel accuracy, per-class IoU/Dice/precision/recall, confusion matrix.

    With ``hd95`` on a :class:`~unet_resnet.data.medical.NiftiSliceDataset`, each volume is
    reassembled from its slices and the 95th-percentile Hausdorff distance of every foreground
    class is computed in 3D with the voxel spacing (mm), averaged over the volumes where both
    prediction and truth have that class (``per_class[name]["hd95"]``, ``mean_hd95``).
    """
    classes = segmenter.classes
    metrics = SegmentationMetrics(
        classes.num_classes, ignore_index=classes.ignore_index, class_names=classes.names
    )
    volumes: dict[int, tuple[list, list]] = {}
    for index in tqdm(range(len(dataset)), desc="evaluate", disable=not progress):
        image, mask = dataset.load(index)
        if mask is None:
            continue
        bad = classes.check_values(mask)
        if bad.size:
            raise DataError(
                f"Labels of sample {index} hold values {bad[:8].tolist()} outside the "
                f"checkpoint's {classes.num_classes} classes ({', '.join(classes.names)}; "
                f"ignore_index {classes.ignore_index}): the dataset and the checkpoint do not "
                "have the same classes."
            )
        labels = segmenter.predict(image)
        metrics.update(
            torch.from_numpy(labels.astype(np.int64))[None], torch.from_numpy(mask)[None]
        )
        if hd95:
            preds, truths = volumes.setdefault(dataset.index[index][0], ([], []))
            preds.append(labels)
            truths.append(mask)
    scores = metrics.compute()
    if hd95:
        _add_hd95(scores, volumes, dataset)
    return scores


def _add_hd95(scores: dict[str, Any], volumes, dataset) -> None:
    from unet_resnet.metrics import hd95 as hausdorff95

    names = list(scores["per_class"])
    per_class: dict[str, list[float]] = {name: [] for name in names[1:]}
    for v, (preds, truths) in volumes.items():
        pred = np.stack(preds, axis=dataset.axis)
        truth = np.stack(truths, axis=dataset.axis)
        for k, name in enumerate(names[1:], start=1):
            value = hausdorff95(pred == k, truth == k, dataset.spacings[v])
            if not math.isnan(value):
                per_class[name].append(value)
    for name, values in per_class.items():
        scores["per_class"][name]["hd95"] = float(np.mean(values)) if values else float("nan")
    finite = [v for vals in per_class.values() for v in vals]
    scores["mean_hd95"] = float(np.mean(finite)) if finite else float("nan")


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
    for name, row in scores["per_class"].items():
        lines.append(
            f"{name[:20]:<20} {pct(row['iou'])} {pct(row['dice'])} {pct(row['precision'])} "
            f"{pct(row['recall'])} {row['support']:>10}"
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
