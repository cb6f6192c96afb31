"""Export to ONNX or TorchScript, with the checkpoint's metadata and a parity check.

The exported graph takes ``N x C x H x W`` float input, already normalised, with dynamic batch,
height and width (sides of at least 32 pixels; any value, not only multiples of 32). An ONNX
file returns class probabilities by default (the task's softmax or sigmoid inside the graph,
what GIS tools such as QGIS's Deepness plugin expect; ``output="logits"`` leaves it out); a
TorchScript file returns logits. Class names/colours, normalisation statistics and the model
config travel with it: inside the ONNX file as metadata properties (ours, and the keys
Deepness reads: :func:`deepness_metadata`), and in a ``FILE.json`` beside either format. After
writing, the export is run on a random input and compared with the eager model; a difference
over the tolerance is an error and the file is not kept.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from unet_resnet.accel.fastpath import fold_checked
from unet_resnet.checkpoint import export_metadata, load_checkpoint, read_export_metadata
from unet_resnet.errors import ExportError, OutputExistsError
from unet_resnet.io import atomic_path
from unet_resnet.task import get_task

__all__ = [
    "EXPORT_FORMATS",
    "ONNX_OUTPUTS",
    "ExportError",
    "ExportReport",
    "deepness_metadata",
    "export_model",
    "read_export_metadata",
]

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
#: What an ONNX graph returns: probabilities (default) or the raw logits.
ONNX_OUTPUTS = ("probabilities", "logits")
#: Deepness's defaults for our files: tile size (pixels) and overlap (percent of the tile).
DEEPNESS_TILE, DEEPNESS_OVERLAP = 512, 15


def deepness_metadata(
    meta, *, resolution_cm: float | None = None, tile_size: int = DEEPNESS_TILE
) -> dict[str, str]:
    """The ONNX metadata keys QGIS's Deepness plugin reads (each value JSON-encoded, as its
    "add metadata to model" page says): a ``Segmentor`` with our class names, our
    normalisation as its standardisation (it scales 8-bit tiles to [0, 1] first, as we do),
    tile size and overlap, no probability threshold for one-class-per-pixel models (its
    arg-max then equals ours) and the ground resolution in cm per pixel when known."""
    task = get_task(meta.task)
    if task.overlapping:
        thresholds = meta.thresholds or [0.5] * meta.classes.num_classes
        threshold = float(np.mean(thresholds))
    else:
        threshold = 0.0
    values: dict[str, object] = {
        "model_type": "Segmentor",
        "class_names": {str(i): name for i, name in enumerate(meta.classes.names)},
        "tiles_size": int(tile_size),
        "tiles_overlap": DEEPNESS_OVERLAP,
        "seg_thresh": threshold,
        "standardization_mean": [float(v) for v in meta.mean],
        "standardization_std": [float(v) for v in meta.std],
    }
    if resolution_cm is not None:
        values["resolution"] = float(resolution_cm)
    return {key: json.dumps(value) for key, value in values.items()}


class _Activated(torch.nn.Module):
    """The model followed by its task's activation (probabilities out), the logits divided
    by the checkpoint's ``temperature`` first (calibrated probabilities for tools that read
    the graph's output as it is, such as QGIS Deepness)."""

    def __init__(self, model: torch.nn.Module, task: str | None, temperature: float | None):
        super().__init__()
        self.model, self.activate = model, get_task(task).activate
        # one value, or one per class (multilabel models), as a constant of the graph
        self.temperature = (
            torch.tensor(temperature, dtype=torch.float32).reshape(1, -1, 1, 1)
            if temperature
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.temperature is not None:
            logits = logits / self.temperature.to(logits.device)
        return self.activate(logits)


@dataclass
class ExportReport:
    path: Path
    metadata_path: Path
    format: str
    max_abs_diff: float
    tolerance: float
    check_shape: tuple[int, ...]


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def export_model(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: ExportFormat = "onnx",
    opset: int = 17,
    check_size: tuple[int, int] = (96, 80),
    tolerance: float = 1e-3,
    overwrite: bool = False,
    output: str = "probabilities",
    resolution_cm: float | None = None,
) -> ExportReport:
    """Export a checkpoint; returns where it went and the parity check's max abs difference.

    ``out`` (or its ``.json`` side file) may never be the checkpoint itself, and replaces an
    existing file only with ``overwrite``. ``output`` (ONNX): ``probabilities`` or
    ``logits``; ``resolution_cm``: the training imagery's ground resolution for Deepness
    (default: what the checkpoint recorded from georeferenced training data, if any).
    """
    if output not in ONNX_OUTPUTS:
        raise ExportError(f"--output {output}: choose one of {', '.join(ONNX_OUTPUTS)}.")
    if format != "onnx" and output != "probabilities":
        raise ExportError("--output goes with --format onnx (TorchScript returns logits).")
    if resolution_cm is not None and not (math.isfinite(resolution_cm) and resolution_cm > 0):
        raise ExportError(
            f"--resolution must be a positive number of cm per pixel, not {resolution_cm}."
        )
    out = Path(out)
    side = out.with_name(out.name + ".json")
    source = Path(checkpoint).resolve()
    if source in (out.resolve(), side.resolve()):
        raise OutputExistsError(
            f"--out {out} would replace the checkpoint {checkpoint} it is exported from; "
            "choose another file name."
        )
    existing = [p for p in (out, side) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{existing[0]} already exists; pass --overwrite to replace it, or choose another "
            "--out."
        )
    model, meta = load_checkpoint(checkpoint)
    c = meta.model_config["in_channels"]
    torch.manual_seed(0)
    model, _ = fold_checked(model.eval(), torch.randn(1, c, 64, 64))
    example = torch.randn(2, c, 64, 64)
    check = torch.randn(1, c, *check_size)
    activated = format == "onnx" and output == "probabilities"
    metadata = export_metadata(meta, format, output="probabilities" if activated else "logits")
    if activated:
        model = _Activated(model, meta.task, meta.temperature).eval()
        if meta.temperature:  # the graph's probabilities are at this temperature already
            metadata["output_temperature"] = meta.temperature
    if resolution_cm is None:
        resolution_cm = meta.resolution_cm
    try:
        with atomic_path(out) as tmp:
            match format:
                case "onnx":
                    deepness = deepness_metadata(meta, resolution_cm=resolution_cm)
                    _export_onnx(model, example, tmp, opset, metadata, deepness, output)
                    got = _run_onnx(tmp, check.numpy())
                case "torchscript":
                    with torch.no_grad(), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # tracer notes about the shape checks
                        traced = torch.jit.trace(model, example, check_trace=False)
                    traced.save(str(tmp), _extra_files={"unet_resnet.json": json.dumps(metadata)})
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FutureWarning)
                        loaded = torch.jit.load(str(tmp))
                    with torch.no_grad():
                        got = loaded(check).numpy()
                case _:
                    raise ValueError(f"Unknown export format {format!r}: onnx, torchscript.")
            with torch.no_grad():
                expected = model(check).numpy()
            if got.shape != expected.shape:
                raise ExportError(
                    f"The exported model returned shape {got.shape}, expected {expected.shape}."
                )
            diff = float(np.abs(got - expected).max())
            if not diff <= tolerance:
                raise ExportError(
                    f"Export parity check failed: max abs difference {diff:.3g} between the "
                    f"exported and the eager model exceeds {tolerance:g}. The file was not written."
                )
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"Export to {format} failed: {type(exc).__name__}: {exc}") from None
    with atomic_path(side) as tmp:
        tmp.write_text(json.dumps(metadata, indent=2) + "\n")
    return ExportReport(out, side, format, diff, tolerance, tuple(check.shape))


def _export_onnx(
    model, example, path: Path, opset: int, metadata: dict, extra: dict[str, str], output: str
) -> None:
    import onnx

    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=[output],
            dynamic_axes={"image": axes, output: axes},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "unet_resnet", json.dumps(metadata)
    for key, value in extra.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
