"""Ensembles: several checkpoints (cross-validation folds, seeds) predicting as one model.

:class:`Ensemble` averages the members' class probabilities. Its ``forward`` returns the logits
of that mean (the log for softmax, the logit for the multilabel sigmoid), so the activation
every caller applies recovers the mean exactly: tiling, TTA, the fast path (each member folded,
cast and packed), ``predict`` and ``evaluate`` work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unet_resnet.errors import ConfigError
from unet_resnet.task import get_task

__all__ = ["Ensemble", "check_members"]


class Ensemble(nn.Module):
    """The mean of the members' probabilities (``task``'s activation), as logits."""

    def __init__(self, members: Sequence[nn.Module], *, task: str = "multiclass") -> None:
        super().__init__()
        self.task = get_task(task)
        if not members:
            raise ConfigError("An ensemble needs at least one model.")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.in_channels = int(getattr(first, "in_channels", 3))
        self.n_classes = int(getattr(first, "n_classes", 0))
        self.config = {"ensemble": [getattr(m, "config", None) for m in members]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([self.task.activate(m(x)) for m in self.members]).mean(0)
        return self.task.from_probabilities(probabilities)


def check_members(sources: Sequence[str], metas: Sequence) -> None:
    """Every member must predict the same classes from the same input: same class names,
    input channels and normalisation; otherwise one error naming the two files."""
    first = metas[0]
    for source, meta in zip(sources[1:], metas[1:], strict=True):
        differences = []
        if meta.task != first.task:
            differences.append(f"task {meta.task} vs {first.task}")
        if meta.classes.names != first.classes.names:
            differences.append(f"classes {meta.classes.names} vs {first.classes.names}")
        if meta.model_config["in_channels"] != first.model_config["in_channels"]:
            differences.append("input channels")
        close = all(
            abs(a - b) <= 1e-6 * max(1.0, abs(b))
            for a, b in zip([*meta.mean, *meta.std], [*first.mean, *first.std], strict=True)
        )
        if not close:
            differences.append(f"normalisation (mean/std {meta.mean}/{meta.std})")
        if differences:
            raise ConfigError(
                f"Checkpoints {sources[0]} and {source} cannot be ensembled: they differ in "
                f"{'; '.join(differences)}. Ensemble models trained on the same data setup "
                "(for example the folds of one cross-validation)."
            )
