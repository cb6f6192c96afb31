"""Segmentation losses that respect ``ignore_index`` and class weights.

Multiclass targets are ``N x H x W`` class indices. Multilabel targets (``task="multilabel"``,
see :mod:`unet_resnet.task`) are ``N x C x H x W`` planes of 0/1 with ``ignore_index`` where a
class is not labelled; Dice and Tversky take either shape, ``bce`` is their binary
cross-entropy.

Every loss casts logits to fp32 before its softmax and reductions, so it stays finite under
bf16/fp16 autocast (sums over millions of pixels overflow fp16 and lose precision in bf16).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BinaryCrossEntropyDiceLoss",
    "BinaryCrossEntropyLoss",
    "CrossEntropyDiceLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LossName",
    "LovaszSoftmaxLoss",
    "TverskyLoss",
    "build_loss",
]

LossName = Literal["ce", "dice", "ce_dice", "focal", "lovasz", "tversky", "bce", "bce_dice"]


def _weights(class_weights: Sequence[float] | None) -> torch.Tensor | None:
    return None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)


def _valid_onehot(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, one-hot targets and the valid-pixel mask, all fp32, N x C x P.

    Multiclass (``target`` N x H x W): softmax and one-hot. Multilabel (``target`` with the
    logits' shape): a sigmoid per class, the 0/1 planes themselves, validity per class.
    """
    n, c = logits.shape[:2]
    if target.ndim == logits.ndim:
        target = target.reshape(n, c, -1)
        valid = (target != ignore_index).float()
        probs = logits.float().sigmoid().reshape(n, c, -1)
        return probs * valid, (target == 1).float() * valid, valid
    probs = logits.float().softmax(1).reshape(n, c, -1)
    target = target.reshape(n, -1)
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0), c).permute(0, 2, 1).float()
    valid = valid.unsqueeze(1).float()
    return probs * valid, onehot * valid, valid


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy (the guide's loss)."""

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", _weights(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # PyTorch's mean: the summed loss over the summed weights of the valid pixels' classes.
        # Written out so that an all-ignored batch gives zero, not NaN, without asking the
        # device whether it is one (a wait for the GPU every step).
        total = F.cross_entropy(
            logits.float(),
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        valid = target != self.ignore_index
        if self.weight is None:
            count = valid.sum().float()
        else:
            count = (self.weight[torch.where(valid, target, 0)] * valid).sum()
        return total / torch.where(count > 0, count, 1.0)


class BinaryCrossEntropyLoss(nn.Module):
    """Binary cross-entropy per class for multilabel targets (cross-entropy per label).

    ``class_weights`` scale each class's term; ignored pixels count for nothing.
    """

    def __init__(
        self, ignore_index: int = 255, class_weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", _weights(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape != logits.shape:
            raise ValueError(
                f"Multilabel targets must have the logits' shape {tuple(logits.shape)}, got "
                f"{tuple(target.shape)}."
            )
        valid = target != self.ignore_index
        # all ignored: every weight 0, a zero loss over the clamped sum (no host sync)
        weight = valid.float()
        if self.weight is not None:
            weight = weight * self.weight.reshape(1, -1, *([1] * (logits.ndim - 2)))
        loss = F.binary_cross_entropy_with_logits(
            logits.float(), (target == 1).float(), reduction="none"
        )
        return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


class TverskyLoss(nn.Module):
    """1 - Tversky index per class, averaged over classes present in the batch.

    ``alpha`` weighs false positives, ``beta`` false negatives; alpha = beta = 0.5 is Dice.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        alpha: float = 0.5,
        beta: float = 0.5,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.alpha, self.beta, self.smooth = alpha, beta, smooth
        self.register_buffer("weight", _weights(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs, onehot, _ = _valid_onehot(logits, target, self.ignore_index)
        dims = (0, 2)  # over the batch and pixels: one score per class
        tp = (probs * onehot).sum(dims)
        fp = (probs * (1 - onehot)).sum(dims)
        fn = ((1 - probs) * onehot).sum(dims)
        score = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        loss = 1 - score
        present = onehot.sum(dims) > 0
        weight = present.float() if self.weight is None else present.float() * self.weight
        return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


class DiceLoss(TverskyLoss):
    """Soft Dice loss (Tversky with alpha = beta = 0.5)."""

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        smooth: float = 1.0,
    ) -> None:
        super().__init__(ignore_index, class_weights, 0.5, 0.5, smooth)


class CrossEntropyDiceLoss(nn.Module):
    """Cross-entropy + Dice, the usual choice for small structures (nnU-Net's default)."""

    cross_entropy: type[nn.Module] = CrossEntropyLoss

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.ce = self.cross_entropy(ignore_index, class_weights)
        self.dice = DiceLoss(ignore_index, class_weights)
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target) + self.dice_weight * self.dice(logits, target)


class BinaryCrossEntropyDiceLoss(CrossEntropyDiceLoss):
    """Binary cross-entropy + Dice for multilabel targets."""

    cross_entropy = BinaryCrossEntropyLoss


class FocalLoss(nn.Module):
    """Focal loss (Lin et al.): cross-entropy down-weighted on easy pixels by (1 - p)^gamma."""

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.register_buffer("weight", _weights(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        valid = target != self.ignore_index
        # all ignored: every weight 0, a zero loss over the clamped sum (no host sync)
        safe = torch.where(valid, target, 0)
        logp = F.log_softmax(logits, 1).gather(1, safe.unsqueeze(1)).squeeze(1)
        loss = -((1 - logp.exp()) ** self.gamma) * logp
        weight = valid.float()
        if self.weight is not None:
            weight = weight * self.weight[safe]
        return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


def _lovasz_grad(sorted_labels: torch.Tensor) -> torch.Tensor:
    total = sorted_labels.sum()
    intersection = total - sorted_labels.cumsum(0)
    union = total + (1 - sorted_labels).cumsum(0)
    jaccard = 1 - intersection / union
    if len(sorted_labels) > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax (Berman et al. 2018): a convex surrogate that optimises IoU directly.

    Averaged over the classes present in the batch; class weights scale each class's term.
    """

    def __init__(self, ignore_index: int = 255, class_weights: Sequence[float] | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", _weights(class_weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = logits.shape[1]
        probs = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, c)
        labels = target.reshape(-1)
        valid = labels != self.ignore_index
        probs, labels = probs[valid], labels[valid]
        if labels.numel() == 0:
            return logits.sum() * 0.0
        losses, weights = [], []
        for k in range(c):
            fg = (labels == k).float()
            if fg.sum() == 0:
                continue
            errors = (fg - probs[:, k]).abs()
            errors_sorted, order = errors.sort(descending=True)
            losses.append(errors_sorted @ _lovasz_grad(fg[order]))
            weights.append(1.0 if self.weight is None else self.weight[k])
        w = torch.as_tensor(weights, dtype=torch.float32, device=logits.device)
        return (torch.stack(losses) * w).sum() / w.sum().clamp_min(1e-6)


def _tversky(**kwargs) -> nn.Module:
    # Recall-leaning defaults for small structures (Salehi et al. 2017).
    return TverskyLoss(**kwargs, alpha=0.3, beta=0.7)


#: task -> loss name -> constructor taking ``ignore_index`` and ``class_weights``. In the
#: multilabel task "ce" and "ce_dice" are their binary forms (cross-entropy per label).
LOSSES: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "multiclass": {
        "ce": CrossEntropyLoss,
        "dice": DiceLoss,
        "ce_dice": CrossEntropyDiceLoss,
        "focal": FocalLoss,
        "lovasz": LovaszSoftmaxLoss,
        "tversky": _tversky,
    },
    "multilabel": {
        "ce": BinaryCrossEntropyLoss,
        "bce": BinaryCrossEntropyLoss,
        "dice": DiceLoss,
        "ce_dice": BinaryCrossEntropyDiceLoss,
        "bce_dice": BinaryCrossEntropyDiceLoss,
        "tversky": _tversky,
    },
}


def build_loss(
    name: LossName = "ce",
    *,
    ignore_index: int = 255,
    class_weights: Sequence[float] | None = None,
    task: str = "multiclass",
) -> nn.Module:
    """A loss by name for ``task`` (:data:`LOSSES`): multiclass ce (default), dice, ce_dice,
    focal, lovasz, tversky; multilabel bce (= ce), dice, bce_dice (= ce_dice), tversky."""
    table = LOSSES.get(task)
    if table is None:
        raise ValueError(f"Unknown task {task!r}. Choose one of: {', '.join(LOSSES)}.")
    if name not in table:
        known = [n for n in get_args(LossName) if n in table]
        raise ValueError(
            f"Loss {name!r} is not available for the {task} task. Choose one of: "
            f"{', '.join(known)}."
        )
    return table[name](ignore_index=ignore_index, class_weights=class_weights)
