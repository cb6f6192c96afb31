"""From class probabilities to class indices."""

from __future__ import annotations

import numpy as np
import torch

from unet_resnet.task import TASKS

__all__ = ["labels_from_probs"]


def labels_from_probs(probs: torch.Tensor) -> np.ndarray:
    """Arg-max over classes of ``K x H x W`` probabilities: uint8 for up to 256 classes."""
    return TASKS["multiclass"].decide(probs).cpu().numpy()
