"""Models run by another inference runtime (ONNX Runtime, OpenVINO), callable like the
PyTorch model so that the Segmenter's tiling, TTA and file formats apply unchanged."""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

__all__ = ["RuntimeModel"]


class RuntimeModel(nn.Module):
    """Takes and returns torch tensors; runs :meth:`run` on float32 NumPy arrays.

    Inputs are padded to a multiple of 32 here, by the same rule as the eager model (the
    graph's own reflect padding needs sides of at least 32), so every backend sees the same
    pixels. The runtime applies its own precision (:attr:`precision`): the Segmenter neither
    casts, packs nor lays out its weights. Calls are serialised (one inference request per
    model; the service calls from several threads).
    """

    #: what the runtime computes in: ``fp32``, ``bf16`` or ``int8``
    precision: str = "fp32"
    #: the backend's name in :data:`~unet_resnet.inference.backends.BACKENDS`
    backend: str = ""
    #: where the runtime runs (the Segmenter then works there too)
    device: torch.device = torch.device("cpu")

    def __init__(self, metadata: dict) -> None:
        super().__init__()
        self.in_channels = int(metadata["model_config"]["in_channels"])
        self.n_classes = int(metadata["model_config"]["n_classes"])
        self._lock = threading.Lock()

    def run(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 32, -w % 32
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        with self._lock:
            out = torch.from_numpy(np.array(self.run(array), copy=True))
        return out[..., :h, :w].to(x.device)
