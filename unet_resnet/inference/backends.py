"""Inference backends: one table from a backend name to what it loads, which precisions it
offers and how it builds a model the :class:`~unet_resnet.inference.Segmenter` runs.

- ``torch``: checkpoints, shared-model folders and Hub ids; on a CPU the fast path (folded,
  bf16, oneDNN-packed), on a GPU cuDNN; every precision, ensembles.
- ``onnxruntime``: an ``.onnx`` file from ``export --format onnx``, or a checkpoint converted
  in memory (fp32; CUDA with onnxruntime-gpu).
- ``openvino``: an IR folder from ``export --format openvino`` (float, or int8 with its
  accuracy report), or a checkpoint converted in memory (fp32, bf16); CPU.

``backend="auto"`` takes the one that loads the source as it is (an IR folder: openvino; an
``.onnx``: onnxruntime). A checkpoint on a CPU is the choice left open: the first build times
the torch fast path against every installed backend that converts checkpoints (OpenVINO, ONNX
Runtime), on the same input in the same process, and keeps the fastest
(:func:`decide_backend`); the choice is cached per model architecture and CPU like the fast
path's, so later builds are instant.
A future backend (TensorRT) is one :func:`register_backend` call.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from unet_resnet.checkpoint import CheckpointMeta, load_checkpoint, read_export_metadata
from unet_resnet.errors import ConfigError

__all__ = [
    "AUTO_BACKENDS_ENV",
    "BACKENDS",
    "Backend",
    "BackendChoice",
    "backend_names",
    "check_precision",
    "choose_backend",
    "decide_backend",
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
    #: also loads sources of the torch backend (checkpoints), converting them; such a
    #: backend is a candidate when ``auto`` times the backends on a CPU
    converts_checkpoints: bool = False
    #: the module it needs (None: always there); ``auto`` times only installed backends
    module: str | None = None

    def installed(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None


BACKENDS: dict[str, Backend] = {}

logger = logging.getLogger("unet_resnet.backends")

#: Which backends ``auto`` may time against the torch path (comma-separated names; default:
#: every installed one that converts checkpoints). ``torch`` alone turns the timing off.
AUTO_BACKENDS_ENV = "UNET_RESNET_AUTO_BACKENDS"
AUTO_CACHE_FILE = "backends.json"
#: Another backend replaces the torch path only when at least this much faster: within it the
#: two are level on a busy machine, and the torch path is the one with every feature.
AUTO_MARGIN = 0.05
#: Side of the input the backends are timed on (batch 1): the scale real work runs at (tiles
#: are 1024 px by default), where the backends' ranking can differ from small inputs'.
AUTO_SIZE = 512


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


@dataclass
class BackendChoice:
    """Which backend runs a checkpoint (``name``, in ``precision``), whether that was
    ``"measured"`` now, read from the ``"cache"`` or ``"fixed"`` (asked for, or nothing to
    choose), the seconds per call of each candidate on the timing input, and why."""

    name: str
    precision: str = "auto"
    source: Literal["measured", "cache", "fixed"] = "fixed"
    timings: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def explain(self) -> str:
        lines = [f"backend: {self.name} ({self.source})"]
        if self.reason:
            lines.append(f"  why: {self.reason}")
        for name, seconds in sorted(self.timings.items(), key=lambda kv: kv[1]):
            lines.append(f"  {name:<12} {1000 * seconds:8.1f} ms per image")
        return "\n".join(lines)


def _auto_candidates() -> list[Backend]:
    allowed = os.environ.get(AUTO_BACKENDS_ENV)
    names = None if not allowed else {n.strip() for n in allowed.split(",") if n.strip()}
    return [
        b
        for b in BACKENDS.values()
        if b.converts_checkpoints and b.installed() and (names is None or b.name in names)
    ]


def decide_backend(
    source: str, device: str = "auto", precision: str = "auto"
) -> tuple[BackendChoice, tuple[Any, CheckpointMeta] | None]:
    """Which backend runs the checkpoint ``source`` fastest on this CPU, and the model that
    was built for it while timing (None when nothing was timed: build it).

    Only a CPU with the precision left to the backends (``auto``, ``fp32``, ``bf16``) has a
    choice; the candidates are the torch fast path (as the Segmenter builds it) and each
    installed backend that converts checkpoints, each timed on the same input (batch 1,
    :data:`AUTO_SIZE`) through the call the Segmenter makes. The torch path is kept
    unless another is at least :data:`AUTO_MARGIN` faster. The choice is cached per model
    architecture, CPU, thread count and library versions."""
    from unet_resnet.hardware import resolve_device

    torch_choice = BackendChoice("torch", precision)
    if resolve_device(device).type != "cpu":
        torch_choice.reason = "not a CPU: the torch backend runs GPUs"
        return torch_choice, None
    if precision not in ("auto", "fp32", "bf16"):
        torch_choice.reason = f"precision {precision} runs on the torch backend"
        return torch_choice, None
    others = [b for b in _auto_candidates() if precision == "auto" or precision in b.precisions]
    if not others:
        torch_choice.reason = (
            f"no other backend to time (installed and allowed by ${AUTO_BACKENDS_ENV})"
        )
        return torch_choice, None
    import torch

    from unet_resnet.accel.fastpath import (
        DTYPES,
        architecture_signature,
        cache_read,
        cache_write,
        prepare_model,
        seconds_per_call,
    )
    from unet_resnet.hardware import cpu_signature

    model, meta = load_checkpoint(source)
    versions = {b.name: _version(b.module) for b in others}
    blob = json.dumps(
        [architecture_signature(model), precision, cpu_signature(), versions, AUTO_SIZE],
        default=str,
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:32]
    cached = cache_read(key, AUTO_CACHE_FILE)
    if cached is not None and cached.get("name") in {"torch", *(b.name for b in others)}:
        cached = {**cached, "source": "cache"}
        cached["reason"] = f"measured earlier on this CPU for this model ({cached['reason']})"
        choice = BackendChoice(**cached)
        return choice, ((model, meta) if choice.name == "torch" else None)

    c = meta.model_config["in_channels"]
    size = AUTO_SIZE
    x = torch.randn(1, c, size, size, generator=torch.Generator().manual_seed(0))
    built, fast = prepare_model(model, device=torch.device("cpu"), precision=precision,
                                in_channels=c)  # fmt: skip
    timings = {
        "torch": seconds_per_call(
            built, x.to(DTYPES[fast.precision]).contiguous(memory_format=torch.channels_last)
        )
    }
    del built
    best: tuple[str, float, Any] = ("torch", timings["torch"], (model, meta))
    for backend in others:
        try:
            runtime, runtime_meta = backend.build(source, "cpu", precision)
            timings[backend.name] = seconds_per_call(runtime, x)
        except Exception as exc:  # a model it cannot convert or run is not a candidate
            logger.warning("%s could not run this model (%s: %s); not timed", backend.name,
                           type(exc).__name__, exc)  # fmt: skip
            continue
        if timings[backend.name] < (1 - AUTO_MARGIN) * best[1]:  # best: torch, or faster
            best = (backend.name, timings[backend.name], (runtime, runtime_meta))
    name, _, built_model = best
    reason = (
        f"fastest of {len(timings)} backends timed on a {size}x{size} input on this CPU "
        f"({cpu_signature()['model']}; another backend replaces torch only when "
        f"{100 * AUTO_MARGIN:.0f}% faster)"
    )
    runtime_precision = getattr(built_model[0], "precision", fast.precision)
    choice = BackendChoice(name, runtime_precision, "measured", timings, reason)
    cache_write(key, asdict(choice), AUTO_CACHE_FILE)
    logger.info("%s", choice.explain())
    return choice, built_model


def _version(module: str | None) -> str | None:
    if module is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


# The backends ---------------------------------------------------------------------------------
def _is_onnx(source: str) -> bool:
    return source.lower().endswith(".onnx") and Path(source).is_file()


def _is_ir(source: str) -> bool:
    from unet_resnet.inference.openvino import is_openvino_folder

    return is_openvino_folder(source)


def _torch(source: str, device: str, precision: str) -> tuple[Any, CheckpointMeta]:
    return load_checkpoint(source)


def _onnxruntime(source: str, device: str, precision: str) -> tuple[Any, CheckpointMeta]:
    from unet_resnet.inference.onnx import OnnxModel, convert

    if _is_onnx(source):
        metadata = read_export_metadata(source)
        return OnnxModel(source, metadata, device=device), CheckpointMeta.from_dict(metadata)
    from unet_resnet.checkpoint import export_metadata

    folded, meta = _folded_checkpoint(source)
    graph = convert(folded, meta.model_config["in_channels"])
    metadata = export_metadata(meta, "onnx", output="logits")
    return OnnxModel(graph, metadata, device=device), meta


def _folded_checkpoint(source: str):
    """A checkpoint's model, BatchNorm folded (checked), for another runtime to convert."""
    import torch

    from unet_resnet.accel.fastpath import fold_checked

    model, meta = load_checkpoint(source)
    c = meta.model_config["in_channels"]
    folded, _ = fold_checked(model.eval(), torch.randn(1, c, 64, 64))
    return folded, meta


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
    from unet_resnet.checkpoint import export_metadata

    folded, meta = _folded_checkpoint(source)
    c = meta.model_config["in_channels"]
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
        module="openvino",
    )
)
register_backend(
    Backend(
        "onnxruntime",
        "an ONNX file: .onnx files written by `export --format onnx`, and checkpoints "
        "(converted in memory)",
        _is_onnx,
        ("fp32",),
        _onnxruntime,
        converts_checkpoints=True,
        module="onnxruntime",
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
