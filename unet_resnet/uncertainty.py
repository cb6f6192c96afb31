"""Where a prediction is unsure, and how good a whole mask is likely to be.

Per-pixel uncertainty maps, each in [0, 1] (1 = as unsure as the classes allow):

- ``entropy``: the predictive entropy of the (calibrated) class probabilities, divided by its
  largest value (``log C``; a multilabel model: the largest of its classes' binary
  entropies, divided by ``log 2``). Needs nothing but the prediction.
- ``tta``: how much the test-time-augmentation views disagree: the mutual information between
  the view and the prediction, ``H(mean of views) - mean of H(view)`` (the part of the entropy
  that the views do not share), on the same scale.
- ``ensemble``: the same for the members of an ensemble (several ``--checkpoint``): the
  models' disagreement, the classic estimate of what more training data would fix.

A quality estimate per image (:class:`QualityMeter`, streamed chunk by chunk): the expected
IoU of each class under the model's own probabilities (expected true positives over expected
true positives, false positives and false negatives, with the predicted mask as the
decision), averaged over the classes the image holds, plus what drives it (the mean
uncertainty inside the predicted foreground and along its boundaries, the worst class). A
class the mask holds nowhere may still be in the image, missed: the true per-image mIoU then
counts it with IoU 0, so the estimate counts it too, weighed by the chance that it is there
(its largest probability in the image, a lower bound of that chance) once that reaches
:data:`MISSED_FROM` (below it, peaks are what every class's boundaries produce, and summed
over many classes they would dilute every estimate alike). Without this, an image whose
tumour or road the model missed would look like its most trustworthy one. A low
expected IoU means the model itself thinks its mask is poor: the review queue sorts inputs by
it, lowest first, for a person to *check*.

To choose what to *label* next, a mean is the wrong ranking: the images a model trusts least
are often those with the least foreground in them (a few uncertain pixels of a small
structure), which teach it little. ``expected_errors`` is the number of pixels the mask
likely gets wrong (the sum over the pixels of 1 - the probability of the decided class; for
multilabel models, of each class plane's wrong decisions), which grows with what a label would
correct: the review queue's labelling order sorts by it, most first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "UNCERTAINTIES",
    "QualityMeter",
    "disagreement",
    "entropy",
    "entropy_map",
    "entropy_scale",
    "image_iou",
    "spearman",
]

#: name -> what the map measures (``predict --uncertainty``)
UNCERTAINTIES: dict[str, str] = {
    "entropy": "predictive entropy of the probabilities",
    "tta": "disagreement of the test-time-augmentation views (mutual information)",
    "ensemble": "disagreement of the ensemble's members (mutual information)",
}

_TINY = 1e-12

#: a class predicted nowhere counts as possibly missed (in the quality estimate and its
#: ``driver``) from this largest probability in the image on
MISSED_FROM = 0.25


def entropy(probs: torch.Tensor, overlapping: bool = False) -> torch.Tensor:
    """Entropy over the class dimension (dim -3) in nats; multilabel: each class's binary
    entropy, the largest of them. ``... x C x H x W`` -> ``... x H x W``. Class by class, so
    what it holds besides its input and output is one plane, not C of them."""
    out = None
    for k in range(probs.shape[-3]):
        p = probs.select(-3, k).float()
        if overlapping:
            q = 1 - p
            h = (p * p.clamp_min(_TINY).log()).add_(q * q.clamp_min(_TINY).log()).neg_()
            out = h if out is None else torch.maximum(out, h, out=out)
        else:
            h = p * p.clamp_min(_TINY).log()
            out = h.neg_() if out is None else out.sub_(h)
    if out is None:
        raise ValueError("entropy of no classes")
    return out


def entropy_scale(num_classes: int, overlapping: bool = False) -> float:
    """The largest entropy :func:`entropy` can take (what maps divide by)."""
    return math.log(2) if overlapping or num_classes < 2 else math.log(num_classes)


def entropy_map(probs: torch.Tensor, *, overlapping: bool = False) -> torch.Tensor:
    """Normalised predictive entropy ``H x W`` in [0, 1] of ``C x H x W`` probabilities."""
    h = entropy(probs, overlapping) / entropy_scale(probs.shape[-3], overlapping)
    return h.clamp_(0, 1)


def disagreement(views: Iterable[torch.Tensor], *, overlapping: bool = False) -> torch.Tensor:
    """Normalised mutual information ``[N x] H x W`` of several predictions of the same pixels
    (TTA views, ensemble members: each ``[N x] C x H x W``): the entropy of their mean minus the
    mean of their entropies, in [0, 1]; 0 where they agree exactly."""
    total = expected = None
    count = 0
    for p in views:
        h = entropy(p, overlapping)
        total = p.float() if total is None else total + p.float()
        expected = h if expected is None else expected + h
        count += 1
    if total is None:
        raise ValueError("disagreement needs at least one prediction")
    mean = total / count
    mi = entropy(mean, overlapping) - expected / count
    return (mi / entropy_scale(mean.shape[-3], overlapping)).clamp_(0, 1)


@dataclass
class QualityMeter:
    """A per-image quality estimate, accumulated chunk by chunk (memory: a few numbers per
    class).

    ``update(probs, labels, uncertainty)``: the chunk's probabilities ``C x H x W``, the
    decision (``H x W`` class indices, or ``C x H x W`` 0/1 planes for multilabel models) and
    its uncertainty map ``H x W`` (any of :data:`UNCERTAINTIES`). ``background`` is the
    class that is not foreground (None: every class counts as foreground, as in multilabel
    models)."""

    num_classes: int
    overlapping: bool = False
    background: int | None = 0
    _tp: np.ndarray = field(init=False, repr=False)
    _fp: np.ndarray = field(init=False, repr=False)
    _fn: np.ndarray = field(init=False, repr=False)
    _predicted: np.ndarray = field(init=False, repr=False)
    _peak: np.ndarray = field(init=False, repr=False)
    _sums: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        shape = self.num_classes
        self._tp, self._fp, self._fn = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self._predicted = np.zeros(shape)
        self._peak = np.zeros(shape)  # each class's largest probability
        self._sums = {name: [0.0, 0] for name in ("all", "foreground", "boundary")}

    #: pixels counted at once: what one update holds besides its input is bounded by this
    CHUNK = 1 << 18

    def update(
        self,
        probs: torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        uncertainty: torch.Tensor,
    ) -> None:
        """One chunk. Pixels whose label is no class (nodata, 255) are left out."""
        c = self.num_classes
        p = probs.reshape(c, -1)
        decided = torch.as_tensor(np.asarray(labels), device=p.device)
        edges = _boundary(decided, self.overlapping)
        flat = decided.reshape(c, -1) if self.overlapping else decided.reshape(-1)
        u = uncertainty.reshape(-1)
        for start in range(0, u.numel(), self.CHUNK):
            part = slice(start, start + self.CHUNK)
            pp, uu, ee = p[:, part].float(), u[part].float(), edges[part]
            if self.overlapping:
                hits = flat[:, part]
                valid = (hits <= 1).all(0)
                if not bool(valid.all()):
                    hits, pp, uu, ee = hits[:, valid], pp[:, valid], uu[valid], ee[valid]
                hits = hits.bool()
                inside = (pp * hits).sum(1)
                predicted = hits.sum(1)
                foreground = hits.any(0)
            else:
                y = flat[part].long()
                valid = y < c
                if not bool(valid.all()):
                    y, pp, uu, ee = y[valid], pp[:, valid], uu[valid], ee[valid]
                chosen = pp.gather(0, y[None])[0]
                inside = torch.bincount(y, weights=chosen.double(), minlength=c)
                predicted = torch.bincount(y, minlength=c)
                foreground = y != self.background if self.background is not None else None
            self._tp += inside.double().cpu().numpy()
            self._fp += (predicted.double() - inside.double()).cpu().numpy()
            self._fn += (pp.double().sum(1) - inside.double()).cpu().numpy()
            self._predicted += predicted.double().cpu().numpy()
            if pp.shape[1]:
                np.maximum(self._peak, pp.amax(1).double().cpu().numpy(), out=self._peak)
            self._add("all", uu)
            self._add("foreground", uu if foreground is None else uu[foreground])
            self._add("boundary", uu[ee])

    def _add(self, name: str, values: torch.Tensor) -> None:
        entry = self._sums[name]
        entry[0] += float(values.double().sum())
        entry[1] += int(values.numel())

    def _mean(self, name: str) -> float | None:
        total, count = self._sums[name]
        return total / count if count else None

    def expected_iou(self) -> np.ndarray:
        """Each class's expected IoU (NaN where it is not predicted)."""
        union = self._tp + self._fp + self._fn
        out = np.full(self.num_classes, np.nan)
        # a class counts where it is predicted, as the true per-image mIoU counts the classes
        # in the mask or the prediction (one expected as a few stray pixels does not)
        present = self._predicted > 0
        out[present] = self._tp[present] / np.maximum(union[present], _TINY)
        return out

    def missed(self) -> np.ndarray:
        """Each class's chance of being in the image although the mask holds it nowhere:
        its largest probability (0 where it is predicted or that is under
        :data:`MISSED_FROM`)."""
        counted = (self._predicted == 0) & (self._peak >= MISSED_FROM)
        return np.where(counted, self._peak, 0.0)

    def summary(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """``quality`` (the expected mIoU, 0-1: lower = check first): the expected IoU of
        each predicted class, and 0 for each class predicted nowhere, weighed by its
        :meth:`missed` chance (the ratio of the expected IoU sum to the expected class
        count); the uncertainty means (all pixels, predicted foreground, boundaries), the
        predicted class with the lowest expected IoU, the likeliest missed class,
        ``expected_errors`` (the pixels the mask likely gets wrong: expected false positives,
        which for one class per pixel are also the false negatives; multilabel: both, over
        the class planes) and ``driver``, a few words on what lowers the score."""
        ious = self.expected_iou()
        names = class_names or [str(k) for k in range(self.num_classes)]
        present = ~np.isnan(ious)
        missed = self.missed()
        counted = present.sum() + missed.sum()
        quality = float(ious[present].sum() / counted) if counted > 0 else 1.0
        worst = int(np.nanargmin(ious)) if present.any() else None
        likeliest = int(np.argmax(missed))
        means = {k: self._mean(k) for k in self._sums}
        wrong = self._fp.sum() + (self._fn.sum() if self.overlapping else 0.0)
        out: dict[str, Any] = {
            "quality": round(quality, 6),
            "expected_errors": round(float(wrong), 3),
            "uncertainty": _round(means["all"]),
            "foreground_uncertainty": _round(means["foreground"]),
            "boundary_uncertainty": _round(means["boundary"]),
            "worst_class": None if worst is None else names[worst],
            "worst_class_iou": None if worst is None else round(float(ious[worst]), 6),
            "missed_class": names[likeliest] if missed[likeliest] > 0 else None,
            "missed_class_probability": round(float(missed[likeliest]), 6),
        }
        out["driver"] = _driver(out)
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _driver(entry: dict[str, Any]) -> str:
    """What lowers an image's quality, in a few words, for the review queue."""
    parts = []
    if entry["worst_class"] is not None and entry["worst_class_iou"] < 0.999:
        parts.append(f"class {entry['worst_class']} (expected IoU {entry['worst_class_iou']:.2f})")
    if entry["missed_class"] is not None:
        chance = entry["missed_class_probability"]
        parts.append(f"class {entry['missed_class']} possibly missed (p up to {chance:.2f})")
    fg, edge = entry["foreground_uncertainty"], entry["boundary_uncertainty"]
    if fg is not None:
        parts.append(f"foreground uncertainty {fg:.2f}")
    if edge is not None:
        parts.append(f"boundary uncertainty {edge:.2f}")
    return "; ".join(parts) or "nothing uncertain"


def _boundary(labels: torch.Tensor, overlapping: bool) -> torch.Tensor:
    """Pixels whose right or lower neighbour has another label (any plane, multilabel), as a
    flat boolean vector."""
    x = labels if not overlapping else labels.reshape(labels.shape[0], *labels.shape[-2:])
    edge = torch.zeros(x.shape[-2:], dtype=torch.bool, device=x.device)
    horizontal = x[..., :, 1:] != x[..., :, :-1]
    vertical = x[..., 1:, :] != x[..., :-1, :]
    if overlapping:
        horizontal, vertical = horizontal.any(0), vertical.any(0)
    edge[:, :-1] |= horizontal
    edge[:, 1:] |= horizontal
    edge[:-1, :] |= vertical
    edge[1:, :] |= vertical
    return edge.reshape(-1)


def image_iou(
    labels: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    *,
    ignore_index: int | None = None,
    overlapping: bool = False,
) -> float:
    """One image's true mIoU: the mean IoU over the classes its mask or its prediction holds
    (what :class:`QualityMeter` estimates); pixels labelled ``ignore_index`` left out. NaN
    where neither holds any class."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    ious = []
    if overlapping:  # C x H x W planes each
        for k in range(num_classes):
            p, t = labels[k].astype(bool), truth[k].astype(bool)
            union = np.count_nonzero(p | t)
            if union:
                ious.append(np.count_nonzero(p & t) / union)
    else:
        valid = truth != ignore_index if ignore_index is not None else np.ones(truth.shape, bool)
        p, t = labels[valid].astype(np.int64), truth[valid].astype(np.int64)
        t = np.where(t < num_classes, t, num_classes)  # out-of-range: no class
        both = np.bincount(t[p == t], minlength=num_classes + 1)[:num_classes]
        pred = np.bincount(np.minimum(p, num_classes), minlength=num_classes + 1)[:num_classes]
        true = np.bincount(t, minlength=num_classes + 1)[:num_classes]
        union = pred + true - both
        ious = [both[k] / union[k] for k in range(num_classes) if union[k]]
    return float(np.mean(ious)) if ious else float("nan")


def spearman(a: Iterable[float], b: Iterable[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (ties share their mean
    rank; NaN under 3 pairs or when either is constant)."""
    x, y = np.asarray(list(a), float), np.asarray(list(b), float)
    if x.size != y.size:
        raise ValueError(f"spearman: {x.size} vs {y.size} values")
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, equal values sharing the mean of theirs."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (starts + (counts - 1) / 2)[inverse]
