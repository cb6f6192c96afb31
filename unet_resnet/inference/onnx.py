"""An exported ONNX file run by ONNX Runtime, callable like the PyTorch model."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxModel", "providers_for"]


def providers_for(device: str | torch.device) -> list[str]:
    """ONNX Runtime's execution providers for ``device``: CUDA's (with the CPU's for the
    operators it lacks) on a CUDA device, the CPU's otherwise."""
    import onnxruntime as ort

    from unet_resnet.errors import ConfigError
    from unet_resnet.hardware import resolve_device

    device = resolve_device(device)
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(
            "The ONNX model was asked to run on CUDA, but this onnxruntime has no CUDA provider "
            "(pip install onnxruntime-gpu), or pass --device cpu."
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


class OnnxModel(nn.Module):
    """An exported ONNX file run by ONNX Runtime, callable like the PyTorch model.

    Takes and returns torch tensors so the Segmenter's tiling and TTA apply unchanged. Inputs
    are padded to a multiple of 32 here, by the same rule as the eager model (the graph's
    own reflect padding needs sides of at least 32), so both backends see the same pixels.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        metadata: dict,
        providers: list[str] | None = None,
        *,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        self.session = ort.InferenceSession(
            str(path), options, providers=providers or providers_for(device)
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
        return out[..., :h, :w].to(x.device)
