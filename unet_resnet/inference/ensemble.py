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

__all__ = ["Ensemble", "Renormalized", "check_members", "members_with_their_normalisation"]


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

    def forward(self, x: torch.Tensor, members: bool = False) -> torch.Tensor:
        """Logits of the members' mean probabilities; ``members=True``: each member's own
        logits, stacked (``M x N x C x H x W``), for their disagreement."""
        if members:
            return torch.stack([m(x) for m in self.members])
        probabilities = torch.stack([self.task.activate(m(x)) for m in self.members]).mean(0)
        return self.task.from_probabilities(probabilities)


class Renormalized(nn.Module):
    """A member trained with another normalisation than the ensemble's input (cross-validation
    folds each fit their own on their own training cases): the input, normalised as the first
    member's checkpoint says, is mapped to this member's normalisation (``x * scale + shift``
    per channel, in fp32 whatever the model's precision) before the member runs."""

    def __init__(self, model: nn.Module, *, scale: Sequence[float], shift: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        # Python floats, not buffers: casting the model to bf16 must not round them.
        self.scale, self.shift = tuple(map(float, scale)), tuple(map(float, shift))
        self._constants: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.in_channels = int(getattr(model, "in_channels", len(self.scale)))
        self.n_classes = int(getattr(model, "n_classes", 0))
        self.config = getattr(model, "config", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.ndim)
        if key not in self._constants:  # made once per device: a copy to a GPU waits for it
            shape = (1, -1, *([1] * (x.ndim - 2)))
            self._constants[key] = tuple(
                torch.tensor(v, device=x.device).reshape(shape) for v in (self.scale, self.shift)
            )
        scale, shift = self._constants[key]
        return self.model((x.float() * scale + shift).to(x.dtype))


def members_with_their_normalisation(members: Sequence[nn.Module], metas: Sequence) -> list:
    """The members, each taking input normalised as the first member's checkpoint says: a
    member whose own normalisation differs is wrapped in :class:`Renormalized`."""
    first = metas[0]
    out = [members[0]]
    for member, meta in zip(members[1:], metas[1:], strict=True):
        if _same_normalisation(meta, first):
            out.append(member)
            continue
        # x0 = (v - m0) / s0 and xk = (v - mk) / sk, so xk = x0 * s0 / sk + (m0 - mk) / sk
        scale = [s0 / sk for s0, sk in zip(first.std, meta.std, strict=True)]
        shift = [(m0 - mk) / sk for m0, mk, sk in zip(first.mean, meta.mean, meta.std, strict=True)]
        out.append(Renormalized(member, scale=scale, shift=shift))
    return out


def _same_normalisation(a, b) -> bool:
    return all(
        abs(x - y) <= 1e-6 * max(1.0, abs(y))
        for x, y in zip([*a.mean, *a.std], [*b.mean, *b.std], strict=True)
    )


def check_members(sources: Sequence[str], metas: Sequence) -> None:
    """Every member must predict the same classes from the same kind of input: same task,
    class names and input channels; otherwise one error naming the two files. Members that
    differ only in normalisation each normalise their own input
    (:func:`members_with_their_normalisation`)."""
    first = metas[0]
    for source, meta in zip(sources[1:], metas[1:], strict=True):
        differences = []
        if meta.task != first.task:
            differences.append(f"task {meta.task} vs {first.task}")
        if meta.classes.names != first.classes.names:
            differences.append(f"classes {meta.classes.names} vs {first.classes.names}")
        if meta.model_config["in_channels"] != first.model_config["in_channels"]:
            differences.append("input channels")
        if differences:
            raise ConfigError(
                f"Checkpoints {sources[0]} and {source} cannot be ensembled: they differ in "
                f"{'; '.join(differences)}. Ensemble models trained on the same data setup "
                "(for example the folds of one cross-validation)."
            )
