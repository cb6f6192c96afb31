"""Segmentation metrics from one confusion matrix per dataset.

Following torchvision's reference ``ConfusionMatrix``: pixels are accumulated over the whole
set (not averaged per batch), reduced across processes by torchmetrics, and IoU/Dice/accuracy
are computed once at the end. ``ignore_index`` pixels never enter the matrix. Training,
``evaluate`` and the recipes all use this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MultilabelPrecisionRecallCurve,
    MultilabelStatScores,
)

from unet_resnet.task import DEFAULT_THRESHOLD

__all__ = [
    "THRESHOLD_GRID",
    "MultilabelSegmentationMetrics",
    "SegmentationMetrics",
    "ThresholdTuner",
    "build_metrics",
    "case_scores",
    "hd95",
    "scores_from_confusion",
    "summarize_cases",
    "surface_distances",
]


class SegmentationMetrics(MulticlassConfusionMatrix):
    """A torchmetrics confusion matrix that reports segmentation scores.

    ``update(logits_or_labels, target)`` takes N x C x H x W logits or N x H x W labels;
    ``compute()`` returns the dict of :func:`scores_from_confusion`.
    """

    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_classes=num_classes, ignore_index=ignore_index, validate_args=False, **kwargs
        )
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        super().update(preds, target)

    def compute(self) -> dict[str, Any]:
        return scores_from_confusion(super().compute(), self.class_names)


def scores_from_confusion(
    confusion: torch.Tensor, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """mIoU, mean Dice, pixel accuracy and per-class IoU/Dice/precision/recall.

    ``confusion[t, p]`` counts pixels of true class t predicted as p. A class absent from both
    the labels and the predictions has no defined IoU and is left out of the means (NaN in
    its per-class entry), which is what the common benchmarks do.
    """
    cm = confusion.double()
    tp = cm.diag()
    total = cm.sum()
    scores = _scores(tp, cm.sum(0) - tp, cm.sum(1) - tp, class_names)
    scores["pixel_accuracy"] = float(tp.sum() / total) if total > 0 else float("nan")
    scores["confusion_matrix"] = confusion.long().tolist()
    return scores


def _scores(
    tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, class_names: Sequence[str] | None
) -> dict[str, Any]:
    """mIoU, mean Dice and per-class IoU/Dice/precision/recall/support from per-class pixel
    counts; a class with no true or predicted pixel is NaN and left out of the means."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    support, predicted = tp + fn, tp + fp
    union = tp + fp + fn
    iou = tp / union
    dice = 2 * tp / (support + predicted)
    precision = tp / predicted
    recall = tp / support
    names = list(class_names or [f"class_{i}" for i in range(len(tp))])
    present = union > 0
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "mean_dice": float(dice[present].mean()) if present.any() else float("nan"),
        "per_class": {
            name: {
                "iou": float(iou[k]),
                "dice": float(dice[k]),
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(names)
        },
    }


class MultilabelSegmentationMetrics(MultilabelStatScores):
    """Per-class IoU/Dice for overlapping classes (``task="multilabel"``).

    ``update(logits_or_planes, target)`` takes ``N x C x H x W`` logits (a sigmoid and the
    per-class ``thresholds`` decide) or 0/1 planes, and ``N x C x H x W`` targets of 0/1 with
    ``ignore_index`` where a class is unlabelled. Each class is scored as its own binary
    problem over the whole set; ``compute()`` returns the dict of
    :func:`scores_from_confusion` (without a confusion matrix; ``pixel_accuracy`` is the share
    of correct per-class decisions).
    """

    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        thresholds: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_labels=num_classes,
            average=None,
            multidim_average="global",
            ignore_index=ignore_index,
            validate_args=False,
            **kwargs,
        )
        self.class_names = list(class_names or [f"class_{i}" for i in range(num_classes)])
        self.thresholds = list(thresholds or [DEFAULT_THRESHOLD] * num_classes)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.is_floating_point():
            limits = torch.as_tensor(self.thresholds, device=preds.device)
            preds = preds.float().sigmoid() >= limits.reshape(1, -1, *([1] * (preds.ndim - 2)))
        super().update(preds.long(), target)

    def compute(self) -> dict[str, Any]:
        tp, fp, tn, fn, _ = super().compute().double().unbind(-1)
        scores = _scores(tp, fp, fn, self.class_names)
        total = (tp + fp + tn + fn).sum()
        scores["pixel_accuracy"] = float((tp + tn).sum() / total) if total > 0 else float("nan")
        return scores


#: The thresholds :class:`ThresholdTuner` tries: 0.05 to 0.95 in steps of 0.05.
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


class ThresholdTuner(MultilabelPrecisionRecallCurve):
    """Per-class decision thresholds that maximise IoU on a validation set.

    Accumulates, for every threshold of :data:`THRESHOLD_GRID`, each class's binary confusion
    counts (torchmetrics' binned precision-recall curve, a fixed-size state however many
    pixels pass); :meth:`best` picks per class the threshold with the highest IoU, the one
    nearest 0.5 among equals (and 0.5 for a class never seen).
    """

    full_state_update = False

    def __init__(self, num_classes: int, *, ignore_index: int = 255, **kwargs: Any) -> None:
        super().__init__(
            num_labels=num_classes,
            thresholds=list(THRESHOLD_GRID),
            ignore_index=ignore_index,
            validate_args=False,
            **kwargs,
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds.float().sigmoid(), target.long())

    def _counts(self) -> tuple[torch.Tensor, ...]:
        # T x C x 2 x 2 [true][predicted], summed over processes when distributed
        with self.sync_context():
            confmat = self.confmat.double()
        return confmat[..., 1, 1], confmat[..., 0, 1], confmat[..., 1, 0], confmat[..., 0, 0]

    def scores_at(self, thresholds: Sequence[float], class_names: Sequence[str]) -> dict[str, Any]:
        """The scores of :class:`MultilabelSegmentationMetrics` at ``thresholds`` (values of
        :data:`THRESHOLD_GRID`)."""
        tp, fp, fn, tn = self._counts()
        rows = [THRESHOLD_GRID.index(round(float(t), 2)) for t in thresholds]
        pick = torch.arange(len(rows))
        tp, fp, fn, tn = (x[rows, pick] for x in (tp, fp, fn, tn))
        scores = _scores(tp, fp, fn, class_names)
        total = (tp + fp + tn + fn).sum()
        scores["pixel_accuracy"] = float((tp + tn).sum() / total) if total > 0 else float("nan")
        scores["thresholds"] = [float(t) for t in thresholds]
        return scores

    def best(self) -> list[float]:
        tp, fp, fn, _ = self._counts()
        iou = torch.where(tp + fp + fn > 0, tp / (tp + fp + fn), torch.nan)
        grid = torch.tensor(THRESHOLD_GRID, dtype=torch.float64)
        chosen = []
        for k in range(iou.shape[1]):
            column = iou[:, k]
            if torch.isnan(column).all():
                chosen.append(DEFAULT_THRESHOLD)
                continue
            top = torch.nan_to_num(column, nan=-1.0)
            best = top.max()
            candidates = torch.nonzero(top >= best - 1e-12).flatten()
            nearest = candidates[(grid[candidates] - DEFAULT_THRESHOLD).abs().argmin()]
            chosen.append(float(grid[nearest]))
        return chosen


def build_metrics(
    task: str,
    num_classes: int,
    *,
    ignore_index: int = 255,
    class_names: Sequence[str] | None = None,
    thresholds: Sequence[float] | None = None,
):
    """The metric for ``task`` (:mod:`unet_resnet.task`): a confusion matrix for multiclass,
    per-class binary counts at ``thresholds`` for multilabel; both report the same dict."""
    if task == "multilabel":
        return MultilabelSegmentationMetrics(
            num_classes, ignore_index=ignore_index, class_names=class_names, thresholds=thresholds
        )
    if task != "multiclass":
        raise ValueError(f"Unknown task {task!r}: multiclass or multilabel.")
    return SegmentationMetrics(num_classes, ignore_index=ignore_index, class_names=class_names)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between two binary masks (in ``spacing``
    units). NaN when either mask is empty; :func:`case_scores` applies the reporting rule for
    empty masks (a miss scores the volume's diagonal)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    if not pred.any() or not truth.any():
        return float("nan")
    spacing = tuple(spacing) if spacing is not None else (1.0,) * pred.ndim
    return float(np.percentile(np.concatenate(surface_distances(pred, truth, spacing)), 95))


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (in ``spacing`` units) from each surface voxel of ``pred`` to the surface of
    ``truth`` and back; both masks must be non-empty. The distance transforms run on the
    bounding box of the two masks (plus one voxel), not the whole volume."""
    from scipy import ndimage

    both = pred | truth
    box = tuple(slice(max(int(np.min(i)) - 1, 0), int(np.max(i)) + 2) for i in np.nonzero(both))
    pred, truth = pred[box], truth[box]
    sp, st = _surface(pred), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return to_truth[sp], to_pred[st]


def case_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    *,
    tolerance: float = 2.0,
) -> dict[str, Any]:
    """Dice, IoU, HD95 and normalised surface Dice (NSD at ``tolerance``) of one structure in
    one case, by the rule the field reports with:

    - truth and prediction both empty: Dice = IoU = NSD = 1, HD95 = 0 (``outcome: "empty"``);
    - a miss (truth only) or a false alarm (prediction only): Dice = IoU = NSD = 0 and HD95 =
      the volume's diagonal in ``spacing`` units, the worst distance possible
      (``outcome: "miss"`` / ``"false_alarm"``); counted, never left out of the means;
    - otherwise ``outcome: "hit"``.
    """
    pred, truth = pred.astype(bool), truth.astype(bool)
    spacing = tuple(float(s) for s in spacing)
    n_pred, n_truth = int(pred.sum()), int(truth.sum())
    diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True))))
    if n_pred == 0 and n_truth == 0:
        return {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, "outcome": "empty"}
    if n_pred == 0 or n_truth == 0:
        outcome = "miss" if n_pred == 0 else "false_alarm"
        return {"dice": 0.0, "iou": 0.0, "hd95": diagonal, "nsd": 0.0, "outcome": outcome}
    overlap = int((pred & truth).sum())
    to_truth, to_pred = surface_distances(pred, truth, spacing)
    distances = np.concatenate([to_truth, to_pred])
    return {
        "dice": 2 * overlap / (n_pred + n_truth),
        "iou": overlap / (n_pred + n_truth - overlap),
        "hd95": float(np.percentile(distances, 95)),
        "nsd": float(
            ((to_truth <= tolerance).sum() + (to_pred <= tolerance).sum()) / distances.size
        ),
        "outcome": "hit",
    }


_OUTCOME_COUNTS = {"hit": "hits", "miss": "misses", "false_alarm": "false_alarms", "empty": "empty"}


def summarize_cases(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per structure: mean / std / median of each metric over cases, and the counts of hits,
    misses, false alarms and empty cases. ``rows`` are ``{"case", "structure", **case_scores}``."""
    summary: dict[str, Any] = {}
    for structure in dict.fromkeys(row["structure"] for row in rows):
        mine = [row for row in rows if row["structure"] == structure]
        entry: dict[str, Any] = {"cases": len(mine)}
        for metric in ("dice", "iou", "hd95", "nsd"):
            values = np.array([row[metric] for row in mine], dtype=np.float64)
            entry[metric] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                "median": float(np.median(values)),
            }
        for outcome, key in _OUTCOME_COUNTS.items():
            entry[key] = sum(row["outcome"] == outcome for row in mine)
        summary[structure] = entry
    return summary
