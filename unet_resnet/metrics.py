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
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = [
    "SegmentationMetrics",
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
    support = cm.sum(1)
    predicted = cm.sum(0)
    union = support + predicted - tp
    iou = tp / union
    dice = 2 * tp / (support + predicted)
    precision = tp / predicted
    recall = tp / support
    names = list(class_names or [f"class_{i}" for i in range(len(tp))])
    present = union > 0
    total = cm.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "mean_dice": float(dice[present].mean()) if present.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
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
        "confusion_matrix": confusion.long().tolist(),
    }


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
