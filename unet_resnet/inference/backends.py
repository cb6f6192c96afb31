"""Inference backends: one table from a backend name to what it loads, which precisions it
offers and how it builds a model the :class:`~unet_resnet.inference.Segmenter` runs.

- ``torch``: checkpoints, shared-model folders and Hub ids; on a CPU the fast path (folded,
  bf16, oneDNN-packed), on a GPU cuDNN; every precision, ensembles.
- ``onnxruntime``: an ``.onnx`` file from ``export --format onnx`` (fp32; CUDA with
  onnxruntime-gpu).
- ``openvino``: an IR folder from ``export --format openvino`` (float, or int8 with its
  accuracy report), or a checkpoint converted in memory (fp32, bf16); CPU.

``backend="auto"`` takes the one that loads the source as it is (an IR folder: openvino; an
``.onnx``: onnxruntime; anything else: torch). A future backend (TensorRT) is one
:func:`register_backend` call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from unet_resnet.checkpoint import CheckpointMeta, load_checkpoint, read_export_metadata
from unet_resnet.errors import ConfigError

__all__ = [
    "BACKENDS",
    "Backend",
    "backend_names",
    "check_precision",
    "choose_backend",
    "register_backend",
]

#: build(source, device, precision) -> (the model, the checkpoint's metadata); a model another
#: runtime runs is a RuntimeModel, which says its precision and device itself
Builder = Callable[[str, str, str], tuple[nn.Module, CheckpointMeta]]


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    #: whether it loads ``source`` as it is (``auto`` picks the first that does)
    loads: Callable[[str], bool]
    #: the precisions it offers (``auto`` always)
    precisions: tuple[str, ...]
    build: Builder
    #: also loads sources of the torch backend (checkpoints), converting them
    converts_checkpoints: bool = False


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def choose_backend(source: str | os.PathLike, name: str = "auto") -> Backend:
    """The backend named ``name``, checked to load ``source``; for ``auto`` the first that
    loads it as it is."""
    source = str(source)
    if name == "auto":
        return next(b for b in BACKENDS.values() if b.loads(source))
    if name not in BACKENDS:
        raise ConfigError(f"Unknown backend {name!r}. Choose one of: auto, {', '.join(BACKENDS)}.")
    backend = BACKENDS[name]
    own = next(b for b in BACKENDS.values() if b.loads(source))
    if own is not backend and not (backend.converts_checkpoints and own.name == "torch"):
        raise ConfigError(
            f"--backend {name} cannot load {source} ({own.description.split(':')[0]}); "
            f"it loads {backend.description.split(':', 1)[1].strip()}. Leave --backend auto."
        )
    return backend


def check_precision(backend: Backend, precision: str) -> None:
    if precision != "auto" and precision not in backend.precisions:
        raise ConfigError(
            f"The {backend.name} backend runs in {', '.join(backend.precisions)}, not "
            f"--precision {precision}."
        )


# The backends ---------------------------------------------------------------------------------
def _is_onnx(source: str) -> bool:
    return source.lower().endswith(".onnx") and Path(source).is_file()


def _is_ir(source: str) -> bool:
    from unet_resnet.inference.openvino import is_openvino_folder

    return is_openvino_folder(source)


def _torch(source: str, device: str, precision: str) -> tuple[Any, CheckpointMeta]:
    return load_checkpoint(source)


def _onnxruntime(source: str, device: str, precision: str) -> tuple[Any, CheckpointMeta]:
    from unet_resnet.inference.onnx import OnnxModel

    metadata = read_export_metadata(source)
    return OnnxModel(source, metadata, device=device), CheckpointMeta.from_dict(metadata)


def _openvino(source: str, device: str, precision: str) -> tuple[Any, CheckpointMeta]:
    from unet_resnet.hardware import cpu_has_fast_bf16, resolve_device
    from unet_resnet.inference.openvino import OpenVinoModel, convert, load_openvino_folder

    if device != "auto" and resolve_device(device).type != "cpu":
        raise ConfigError(
            f"The OpenVINO backend runs on the CPU, not --device {device}: pass --device cpu "
            "(or auto), or --backend torch for the GPU."
        )
    if _is_ir(source):
        model, metadata = load_openvino_folder(source, precision)
        return model, CheckpointMeta.from_dict(metadata)
    from unet_resnet.accel.fastpath import fold_checked
    from unet_resnet.checkpoint import export_metadata

    torch_model, meta = load_checkpoint(source)
    c = meta.model_config["in_channels"]
    import torch

    folded, _ = fold_checked(torch_model.eval(), torch.randn(1, c, 64, 64))
    if precision == "auto":
        precision = "bf16" if cpu_has_fast_bf16() else "fp32"
    model = OpenVinoModel(
        convert(folded, c), export_metadata(meta, "openvino"), precision=precision
    )
    return model, meta


register_backend(
    Backend(
        "openvino",
        "an OpenVINO IR folder: folders written by `export --format openvino` (float or int8) "
        "and checkpoints (converted in memory)",
        _is_ir,
        ("fp32", "bf16", "int8"),
        _openvino,
        converts_checkpoints=True,
    )
)
register_backend(
    Backend(
        "onnxruntime",
        "an ONNX file: .onnx files written by `export --format onnx`",
        _is_onnx,
        ("fp32",),
        _onnxruntime,
    )
)
register_backend(
    Backend(
        "torch",
        "a PyTorch checkpoint: .pt/.ckpt checkpoints, shared-model folders and Hub ids",
        lambda source: True,
        ("fp32", "bf16", "fp16"),
        _torch,
    )
)
