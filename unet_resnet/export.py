"""Export to ONNX or TorchScript, with the checkpoint's metadata and a parity check.

The exported graph takes ``N x C x H x W`` float input, already normalised, with dynamic batch,
height and width (sides of at least 32 pixels; any value, not only multiples of 32) and returns
logits of the same height and width. Class names/colours, normalisation statistics and the
model config travel with it: inside the ONNX file as metadata properties, and in a
``FILE.json`` beside either format. After writing, the export is run on a random input and
compared with the eager model; a difference over the tolerance is an error and the file is not
kept.
"""

from __future__ import annotations

import json
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

__all__ = ["EXPORT_FORMATS", "ExportError", "ExportReport", "export_model", "read_export_metadata"]

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)


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
) -> ExportReport:
    """Export a checkpoint; returns where it went and the parity check's max abs difference.

    ``out`` (or its ``.json`` side file) may never be the checkpoint itself, and replaces an
    existing file only with ``overwrite``.
    """
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
    metadata = export_metadata(meta, format)
    try:
        with atomic_path(out) as tmp:
            match format:
                case "onnx":
                    _export_onnx(model, example, tmp, opset, metadata)
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


def _export_onnx(model, example, path: Path, opset: int, metadata: dict) -> None:
    import onnx

    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "unet_resnet", json.dumps(metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
