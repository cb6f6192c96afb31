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

__all__ = ["SegmentationMetrics", "hd95", "scores_from_confusion"]


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
    units). NaN when either mask is empty."""
    from scipy import ndimage

    pred, truth = pred.astype(bool), truth.astype(bool)
    if not pred.any() or not truth.any():
        return float("nan")
    spacing = tuple(spacing) if spacing is not None else (1.0,) * pred.ndim

    def surface(mask: np.ndarray) -> np.ndarray:
        return mask & ~ndimage.binary_erosion(mask)

    sp, st = surface(pred), surface(truth)
    to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    distances = np.concatenate([to_truth[sp], to_pred[st]])
    return float(np.percentile(distances, 95))
