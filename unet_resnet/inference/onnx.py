"""An exported ONNX file run by ONNX Runtime, callable like the PyTorch model."""

from __future__ import annotations

import os

import numpy as np
import torch

from unet_resnet.inference.runtime import RuntimeModel
from unet_resnet.task import get_task

__all__ = ["OnnxModel", "convert", "onnx_device", "providers_for"]


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


def onnx_device(device: str | torch.device) -> torch.device:
    """``auto``: CUDA where there is a GPU *and* ONNX Runtime has its CUDA provider
    (onnxruntime-gpu), else the CPU; anything else as given."""
    from unet_resnet.hardware import resolve_device

    if device == "auto":
        import onnxruntime as ort

        gpu = resolve_device("auto").type == "cuda"
        cuda = gpu and "CUDAExecutionProvider" in ort.get_available_providers()
        return torch.device("cuda" if cuda else "cpu")
    return resolve_device(device)


def convert(model: torch.nn.Module, in_channels: int) -> bytes:
    """An eval-mode PyTorch model as an ONNX graph in memory (logits; dynamic batch, height
    and width), as ``export --format onnx --output logits`` writes it minus the metadata."""
    import io
    import warnings

    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    example = torch.randn(1, in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes
        torch.onnx.export(
            model, (example,), buffer, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes}, opset_version=17, dynamo=False,
        )  # fmt: skip
    return buffer.getvalue()


class OnnxModel(RuntimeModel):
    """An exported ONNX file (or a graph in memory, :func:`convert`) run by ONNX Runtime,
    callable like the PyTorch model (fp32)."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike | bytes,
        metadata: dict,
        providers: list[str] | None = None,
        *,
        device: str | torch.device = "cpu",
    ):
        super().__init__(metadata)
        import onnxruntime as ort

        self.device = onnx_device(device)
        options = ort.SessionOptions()
        self.session = ort.InferenceSession(
            path if isinstance(path, bytes) else str(path),
            options,
            providers=providers or providers_for(self.device),
        )
        self.input_name = self.session.get_inputs()[0].name
        # Files that return probabilities hand the Segmenter logits again (it activates, at
        # the checkpoint's temperature or --temperature): probabilities a calibrated graph
        # made at its temperature T are log p = z / T + c, so times T they are the logits.
        self.to_logits = (
            get_task(metadata.get("task")).from_probabilities
            if metadata.get("output_kind") == "probabilities"
            else None
        )
        graph = metadata.get("output_temperature")  # one value, or one per class
        self.graph_temperature = (
            torch.tensor(graph, dtype=torch.float32).reshape(1, -1, 1, 1) if graph else None
        )

    def run(self, array: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: array})[0]
        if self.to_logits is not None:
            logits = self.to_logits(torch.from_numpy(out))
            if self.graph_temperature is not None:
                logits = logits * self.graph_temperature
            out = logits.numpy()
        return out
