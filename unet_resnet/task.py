"""What the model's output channels mean: one table from a task name to its activation and
its decision rule.

- ``multiclass`` (default, the guide's): one class per pixel; softmax over channels and the
  arg-max decides.
- ``multilabel``: each channel is a class of its own that may overlap the others (tumour core
  inside whole tumour, road under tree canopy); a sigmoid per channel, and a pixel has class
  ``k`` where its probability reaches ``thresholds[k]`` (default 0.5).

Training (loss, metrics), the Segmenter, ensembles, exports and file outputs read the task
from here, never from an ``if`` of their own on the name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from unet_resnet.errors import ConfigError

__all__ = [
    "DEFAULT_THRESHOLD",
    "TASKS",
    "Task",
    "TaskName",
    "check_thresholds",
    "get_task",
]

TaskName = Literal["multiclass", "multilabel"]

#: The per-class decision threshold of multilabel models unless tuned or given.
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Task:
    """How logits become probabilities, and probabilities become a decision.

    Attributes:
        name: the task's name (``TaskName``).
        activate: ``N x C x H x W`` logits -> probabilities (fp32).
        from_probabilities: the inverse (probabilities -> logits), so an ensemble's mean of
            probabilities can travel through code that applies :attr:`activate`.
        overlapping: classes may overlap (one binary plane per class) rather than one class
            per pixel.
    """

    name: str
    activate: Callable[[torch.Tensor], torch.Tensor]
    from_probabilities: Callable[[torch.Tensor], torch.Tensor]
    overlapping: bool

    def decide(
        self, probs: torch.Tensor, thresholds: Sequence[float] | None = None
    ) -> torch.Tensor:
        """``C x H x W`` probabilities -> ``H x W`` class indices (multiclass, uint8 for up to
        256 classes) or ``C x H x W`` uint8 0/1 planes (multilabel)."""
        if not self.overlapping:
            return _argmax(probs)
        limits = torch.as_tensor(
            thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * probs.shape[0],
            dtype=probs.dtype,
            device=probs.device,
        ).reshape(-1, *([1] * (probs.ndim - 1)))
        return (probs >= limits).to(torch.uint8)


def _argmax(probs: torch.Tensor) -> torch.Tensor:
    # One vectorised pass per class: torch's argmax over the leading dimension of a large
    # tensor runs element by element and costs a third of the model's time on a big scene.
    # Strict ">" keeps the first of equal maxima, as argmax does.
    labels = torch.zeros(
        probs.shape[1:],
        dtype=torch.uint8 if probs.shape[0] <= 256 else torch.int32,
        device=probs.device,
    )
    best = probs[0].clone()
    for k in range(1, probs.shape[0]):
        labels.masked_fill_(probs[k] > best, k)
        torch.maximum(best, probs[k], out=best)
    return labels


_TINY = torch.finfo(torch.float32).tiny

TASKS: dict[str, Task] = {
    "multiclass": Task(
        "multiclass",
        activate=lambda logits: logits.float().softmax(1),
        from_probabilities=lambda p: p.clamp_min(_TINY).log(),
        overlapping=False,
    ),
    "multilabel": Task(
        "multilabel",
        activate=lambda logits: logits.float().sigmoid(),
        from_probabilities=lambda p: torch.logit(p.clamp(1e-7, 1 - 1e-7)),
        overlapping=True,
    ),
}


def get_task(name: str | None) -> Task:
    """The task named ``name`` (None = multiclass, what checkpoints without a task hold)."""
    try:
        return TASKS[name or "multiclass"]
    except KeyError:
        raise ConfigError(
            f"Unknown task {name!r}. Choose one of: {', '.join(get_args(TaskName))}."
        ) from None


def check_thresholds(thresholds: Sequence[float] | None, num_classes: int) -> list[float] | None:
    """Per-class thresholds, checked: one value in (0, 1) per class, or None (0.5 each)."""
    if thresholds is None:
        return None
    values = [float(t) for t in thresholds]
    if len(values) == 1:
        values = values * num_classes
    if len(values) != num_classes or not all(math.isfinite(t) and 0 < t < 1 for t in values):
        raise ConfigError(
            f"Thresholds {list(thresholds)} do not fit {num_classes} classes: give one value "
            "for all classes or one per class, each between 0 and 1 (exclusive)."
        )
    return values
