"""How far predicted probabilities are from observed frequencies, and one temperature that
brings them closer (Guo et al., 2017: temperature scaling keeps the arg-max, so labels and
mIoU stay as they are).

- :class:`CalibrationStats` accumulates over many images in bounded memory: equal-width
  confidence bins for ECE and MCE (every pixel counted), class-wise ECE (each class's
  probability against whether the pixel is that class), and a bounded random sample of
  pixels for ACE (equal-mass bins) and for fitting the temperature.
- :func:`fit_temperature`: the temperature minimising the negative log-likelihood of the
  sampled pixels (a golden-section search over log T), from probabilities, so it works for
  any backend and for an ensemble's averaged probabilities (``softmax(log p / T)`` is
  ``softmax(z / T)`` for the logits ``z`` behind ``p``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "CalibrationStats",
    "MultilabelCalibrationStats",
    "calibration_stats",
    "fit_binary_temperature",
    "fit_temperature",
    "plot_reliability",
    "rescale",
]

_TINY = 1e-12


def rescale(
    probs: torch.Tensor, temperature: float | list[float], *, overlapping: bool = False
) -> torch.Tensor:
    """Class probabilities (``C x ...``) at another temperature: ``softmax(log p / T)``
    (summing to one over C), or for multilabel (``overlapping``) each class's
    ``sigmoid(logit p / T_c)`` with one temperature per class (or one for all)."""
    if not overlapping:
        if temperature == 1.0:
            return probs
        return torch.softmax(probs.clamp_min(_TINY).log() / float(temperature), dim=0)
    t = torch.as_tensor(temperature, dtype=torch.float64).reshape(-1)
    if bool((t == 1.0).all()):
        return probs
    t = t.reshape(-1, *([1] * (probs.ndim - 1))).to(probs.device)
    logits = torch.logit(probs.double().clamp(1e-7, 1 - 1e-7))
    return torch.sigmoid(logits / t).to(probs.dtype)


class _Summary:
    """The scores every calibration statistic reports, as one dict."""

    def summary(self) -> dict[str, Any]:
        return {
            "ece": self.ece(),
            "ace": self.ace(),
            "mce": self.mce(),
            "classwise_ece": self.classwise_ece(),
            "bins": self.bins,
            "pixels": self.pixels,
        }


@dataclass
class CalibrationStats(_Summary):
    """Calibration of one-class-per-pixel probabilities over a dataset, streamed."""

    num_classes: int
    bins: int = 15
    ignore_index: int | None = None
    #: pixels kept per image for ACE and temperature fitting, and at most in all
    sample_per_image: int = 20_000
    max_samples: int = 1_000_000
    seed: int = 0
    _count: np.ndarray = field(init=False, repr=False)
    _confidence: np.ndarray = field(init=False, repr=False)
    _correct: np.ndarray = field(init=False, repr=False)
    _class_count: np.ndarray = field(init=False, repr=False)
    _class_prob: np.ndarray = field(init=False, repr=False)
    _class_hits: np.ndarray = field(init=False, repr=False)
    _samples: list = field(init=False, repr=False)
    _kept: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._count = np.zeros(self.bins)
        self._confidence = np.zeros(self.bins)
        self._correct = np.zeros(self.bins)
        shape = (self.num_classes, self.bins)
        self._class_count, self._class_prob = np.zeros(shape), np.zeros(shape)
        self._class_hits = np.zeros(shape)
        self._samples, self._kept = [], 0
        self._rng = np.random.default_rng(self.seed)

    #: pixels binned at once: what one update holds besides its input is bounded by this
    CHUNK = 1 << 18

    def update(self, probs: torch.Tensor | np.ndarray, labels: np.ndarray) -> None:
        """One image: probabilities ``C x H x W`` and its true labels ``H x W``."""
        p = torch.as_tensor(probs).float().reshape(self.num_classes, -1).cpu()
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(-1)
        valid = (y >= 0) & (y < self.num_classes)
        if self.ignore_index is not None:
            valid &= y != self.ignore_index
        keep = valid.nonzero()[:, 0]
        if keep.numel() == 0:
            return
        for part in keep.split(self.CHUNK):
            self._bin(p[:, part], y[part])
        room = min(self.sample_per_image, self.max_samples - self._kept)
        if room > 0:
            take = self._rng.choice(keep.numel(), size=min(room, keep.numel()), replace=False)
            take = keep[torch.from_numpy(np.sort(take))]
            self._samples.append((p[:, take].T.clone(), y[take].clone()))
            self._kept += take.numel()

    def _bin(self, p: torch.Tensor, y: torch.Tensor) -> None:
        """Add ``C x n`` probabilities of ``n`` valid pixels with labels ``y`` to the bins."""
        bins, size = self.bins, self.num_classes * self.bins
        confidence, predicted = p.max(0)
        index = (confidence * bins).long().clamp_(max=bins - 1).numpy()
        self._count += np.bincount(index, minlength=bins)
        self._confidence += np.bincount(index, confidence.double().numpy(), bins)
        self._correct += np.bincount(index, (predicted == y).double().numpy(), bins)
        # class-wise: each class's probability bin, and (for the true class only) a hit
        class_index = (p * bins).long().clamp_(max=bins - 1)
        flat = (torch.arange(self.num_classes)[:, None] * bins + class_index).reshape(-1)
        shape = (self.num_classes, bins)
        self._class_count += np.bincount(flat.numpy(), minlength=size).reshape(shape)
        self._class_prob += np.bincount(flat.numpy(), p.reshape(-1).double().numpy(), size).reshape(
            shape
        )
        true_bins = y * bins + class_index.gather(0, y[None])[0]
        self._class_hits += np.bincount(true_bins.numpy(), minlength=size).reshape(shape)

    # -- scores --------------------------------------------------------------------------------
    @property
    def pixels(self) -> int:
        return int(self._count.sum())

    def ece(self) -> float:
        """Expected calibration error: the pixel-weighted gap between confidence and accuracy
        over equal-width confidence bins."""
        n = self._count.sum()
        return float(np.abs(self._confidence - self._correct).sum() / n) if n else float("nan")

    def mce(self) -> float:
        """Maximum calibration error: the largest gap of a non-empty bin."""
        full = self._count > 0
        if not full.any():
            return float("nan")
        gaps = np.abs(self._confidence[full] - self._correct[full]) / self._count[full]
        return float(gaps.max())

    def classwise_ece(self) -> list[float]:
        """Per class: the gap between its predicted probability and its frequency."""
        n = self._class_count.sum(1)
        gaps = np.abs(self._class_prob - self._class_hits).sum(1)
        return [float(g / c) if c else float("nan") for g, c in zip(gaps, n, strict=True)]

    def _sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._samples:
            return torch.zeros(0, self.num_classes), torch.zeros(0, dtype=torch.long)
        return torch.cat([p for p, _ in self._samples]), torch.cat([y for _, y in self._samples])

    def ace(self) -> float:
        """Adaptive calibration error: as ECE over equal-mass bins (on the pixel sample)."""
        p, y = self._sample()
        if y.numel() == 0:
            return float("nan")
        confidence, predicted = p.max(1)
        order = torch.argsort(confidence)
        correct = (predicted == y).double()[order]
        confidence = confidence.double()[order]
        parts = zip(
            torch.tensor_split(confidence, self.bins),
            torch.tensor_split(correct, self.bins),
            strict=True,
        )
        gaps = [abs(float(c.mean() - a.mean())) * c.numel() for c, a in parts if c.numel()]
        return float(sum(gaps) / y.numel())

    def fit_temperature(self) -> float:
        """The temperature minimising the sample's negative log-likelihood."""
        p, y = self._sample()
        return fit_temperature(p.T, y)

    def at_temperature(self, temperature: float) -> CalibrationStats:
        """The same sample's statistics at another temperature (the sample only: for the
        before/after comparison of a fit)."""
        other = CalibrationStats(self.num_classes, self.bins, None, max_samples=self.max_samples)
        p, y = self._sample()
        if y.numel():
            other.update(rescale(p.T, temperature), y.numpy())
        return other

    def reliability(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per equal-width bin: mean confidence, accuracy, pixel count (empty bins NaN)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._confidence / self._count, self._correct / self._count, self._count


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature in [0.05, 20] minimising ``NLL(softmax(log p / T), y)`` over the given
    pixels (``C x N`` probabilities, ``N`` labels); 1.0 for no pixels."""
    if labels.numel() == 0:
        return 1.0
    log_p = probs.double().clamp_min(_TINY).log()

    def nll(log_t: float) -> float:
        scaled = torch.log_softmax(log_p / math.exp(log_t), dim=0)
        return float(-scaled.gather(0, labels[None]).mean())

    return _golden(nll)


def fit_binary_temperature(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature in [0.05, 20] minimising the binary NLL of ``sigmoid(logit p / T)``
    against 0/1 ``targets`` (one class of a multilabel model); 1.0 for no pixels or a class
    that is all one value (nothing to fit)."""
    if targets.numel() == 0 or bool((targets == targets.reshape(-1)[0]).all()):
        return 1.0
    logits = torch.logit(probs.double().clamp(1e-7, 1 - 1e-7))
    y = targets.double()

    def nll(log_t: float) -> float:
        return float(
            torch.nn.functional.binary_cross_entropy_with_logits(logits / math.exp(log_t), y)
        )

    return _golden(nll)


def _golden(nll) -> float:
    """The minimum of ``nll(log T)`` over T in [0.05, 20], by golden-section search."""
    low, high = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(60):  # the bracket shrinks to ~1e-12 of itself
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return float(math.exp((low + high) / 2))


@dataclass
class MultilabelCalibrationStats(_Summary):
    """Calibration of multilabel probabilities (a sigmoid per class), streamed: for each class
    its probability against whether the pixel has it, in equal-width bins (ECE and MCE per
    class; ``ece`` is their pixel-weighted mean), and a bounded sample of pixels for ACE and
    for fitting one temperature per class. Targets are ``C x H x W`` 0/1 planes; other values
    (ignored pixels) are left out, class by class."""

    num_classes: int
    bins: int = 15
    sample_per_image: int = 20_000
    max_samples: int = 1_000_000
    seed: int = 0
    overlapping = True

    def __post_init__(self) -> None:
        shape = (self.num_classes, self.bins)
        self._count, self._prob, self._hits = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self._samples: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._kept = 0
        self._rng = np.random.default_rng(self.seed)

    def update(self, probs: torch.Tensor | np.ndarray, planes: np.ndarray) -> None:
        c, bins = self.num_classes, self.bins
        p = torch.as_tensor(probs).float().reshape(c, -1).cpu()
        y = torch.as_tensor(np.asarray(planes)).reshape(c, -1).long()
        valid = (y == 0) | (y == 1)
        for k in range(c):
            keep = valid[k].nonzero()[:, 0]
            if keep.numel() == 0:
                continue
            pk, yk = p[k, keep], y[k, keep]
            index = (pk * bins).long().clamp_(max=bins - 1).numpy()
            self._count[k] += np.bincount(index, minlength=bins)
            self._prob[k] += np.bincount(index, pk.double().numpy(), bins)
            self._hits[k] += np.bincount(index, yk.double().numpy(), bins)
        room = min(self.sample_per_image, self.max_samples - self._kept)
        everywhere = valid.all(0).nonzero()[:, 0]
        if room > 0 and everywhere.numel():
            take = self._rng.choice(
                everywhere.numel(), size=min(room, everywhere.numel()), replace=False
            )
            take = everywhere[torch.from_numpy(np.sort(take))]
            self._samples.append((p[:, take].clone(), y[:, take].clone()))
            self._kept += take.numel()

    @property
    def pixels(self) -> int:
        return int(self._count.sum(1).max()) if self.num_classes else 0

    def classwise_ece(self) -> list[float]:
        n = self._count.sum(1)
        gaps = np.abs(self._prob - self._hits).sum(1)
        return [float(g / m) if m else float("nan") for g, m in zip(gaps, n, strict=True)]

    def ece(self) -> float:
        n = self._count.sum()
        return float(np.abs(self._prob - self._hits).sum() / n) if n else float("nan")

    def mce(self) -> float:
        full = self._count > 0
        if not full.any():
            return float("nan")
        return float((np.abs(self._prob - self._hits)[full] / self._count[full]).max())

    def _sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._samples:
            empty = torch.zeros(self.num_classes, 0)
            return empty, empty.long()
        return torch.cat([p for p, _ in self._samples], 1), torch.cat(
            [y for _, y in self._samples], 1
        )

    def ace(self) -> float:
        """Equal-mass bins per class over the pixel sample, averaged over the classes."""
        p, y = self._sample()
        if y.shape[1] == 0:
            return float("nan")
        values = []
        for k in range(self.num_classes):
            order = torch.argsort(p[k])
            parts = zip(
                torch.tensor_split(p[k][order].double(), self.bins),
                torch.tensor_split(y[k][order].double(), self.bins),
                strict=True,
            )
            gaps = [abs(float(a.mean() - b.mean())) * a.numel() for a, b in parts if a.numel()]
            values.append(sum(gaps) / y.shape[1])
        return float(np.mean(values))

    def fit_temperature(self) -> list[float]:
        """One temperature per class (binary NLL of the sample)."""
        p, y = self._sample()
        return [fit_binary_temperature(p[k], y[k]) for k in range(self.num_classes)]

    def at_temperature(self, temperature: float | list[float]) -> MultilabelCalibrationStats:
        other = MultilabelCalibrationStats(
            self.num_classes, self.bins, max_samples=self.max_samples
        )
        p, y = self._sample()
        if y.shape[1]:
            other.update(rescale(p, temperature, overlapping=True), y.numpy())
        return other

    def reliability(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per bin, pooled over the classes: mean probability, frequency, count."""
        count = self._count.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._prob.sum(0) / count, self._hits.sum(0) / count, count


def calibration_stats(num_classes: int, *, overlapping: bool = False, ignore_index=None):
    """The calibration statistics of a task: :class:`CalibrationStats` for one class per pixel,
    :class:`MultilabelCalibrationStats` for multilabel planes."""
    if overlapping:
        return MultilabelCalibrationStats(num_classes)
    return CalibrationStats(num_classes, ignore_index=ignore_index)


def plot_reliability(
    before: CalibrationStats, after: CalibrationStats | None, path, title: str = ""
) -> None:
    """A reliability diagram (accuracy against confidence per bin, before and after)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect")
    for stats, name in ((before, "before"), (after, "after")):
        if stats is None:
            continue
        confidence, accuracy, count = stats.reliability()
        keep = count > 0
        ax.plot(confidence[keep], accuracy[keep], "o-", label=f"{name}: ECE {stats.ece():.3f}")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
