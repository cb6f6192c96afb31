"""An exported ONNX file run by ONNX Runtime, callable like the PyTorch model."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxModel"]


class OnnxModel(nn.Module):
    """An exported ONNX file run by ONNX Runtime, callable like the PyTorch model.

    Takes and returns torch tensors so the Segmenter's tiling and TTA apply unchanged. Inputs
    are padded to a multiple of 32 here, by the same rule as the eager model (the graph's
    own reflect padding needs sides of at least 32), so both backends see the same pixels.
    """

    def __init__(self, path: str | os.PathLike, metadata: dict, providers: list[str] | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        self.session = ort.InferenceSession(
            str(path), options, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.in_channels = int(metadata["model_config"]["in_channels"])
        self.n_classes = int(metadata["model_config"]["n_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 32, -w % 32
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        out = torch.from_numpy(self.session.run(None, {self.input_name: array})[0])
        return out[..., :h, :w]
