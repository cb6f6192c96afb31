"""OpenVINO as an inference backend: an IR folder written by ``unet-resnet export --format
openvino`` (float or int8), or a checkpoint converted in memory, run on the CPU.

An IR folder holds ``model.xml``/``model.bin``, ``unet_resnet.json`` (the checkpoint's
classes, normalisation and task, as every export carries, plus the IR's precision) and, for
int8, ``report.json`` (how the quantized model scored against the float one).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unet_resnet.checkpoint import EXPORT_METADATA_FILE
from unet_resnet.errors import ConfigError, WeightsFileError
from unet_resnet.inference.runtime import RuntimeModel

__all__ = [
    "IR_FILE",
    "METADATA_FILE",
    "REPORT_FILE",
    "OpenVinoModel",
    "convert",
    "inference_hint",
    "is_openvino_folder",
    "kept_signal_stack",
    "load_openvino",
    "load_openvino_folder",
    "read_ir_metadata",
    "shared_core",
]

IR_FILE = "model.xml"
METADATA_FILE = EXPORT_METADATA_FILE
REPORT_FILE = "report.json"


def load_openvino():
    """The ``openvino`` module, or an error naming the extra that installs it."""
    try:
        import openvino
    except ImportError:
        raise ConfigError(
            "The OpenVINO backend needs openvino: pip install 'unet-resnet[openvino]'."
        ) from None
    return openvino


# Signal stacks -------------------------------------------------------------------------------
# OpenVINO's CPU plugin, when it loads, gives the calling thread a signal stack of its own
# (sigaltstack: AMX state needs more room than CPython's) and, when it unloads, puts the
# previous one back only if its own is still the current one, then unmaps its own. Plugins are
# per Core: two Cores unloaded in the order they loaded leave the thread's signal stack
# pointing at the first one's unmapped memory, and the next signal handled on that thread
# (Ctrl-C, a SIGTERM handler, PyTorch's SIGCHLD handler for DataLoader workers: CPython installs
# every handler with SA_ONSTACK) kills the process with SIGSEGV, or writes its frame over
# whatever reused that memory. Hence one Core per process, never unloaded (shared_core), and
# the thread's own signal stack put back around libraries that make Cores of their own (NNCF).


class _StackT(ctypes.Structure):
    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


@functools.cache
def _libc():
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sigaltstack.argtypes = [ctypes.POINTER(_StackT), ctypes.POINTER(_StackT)]
        return libc
    except (OSError, AttributeError):
        return None


def signal_stack() -> tuple[int, int] | None:
    """The calling thread's signal stack as (address, size), or None where it cannot be read."""
    libc = _libc()
    current = _StackT()
    if libc is None or libc.sigaltstack(None, ctypes.byref(current)) != 0:
        return None
    return int(current.ss_sp or 0), int(current.ss_size)


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Within the block OpenVINO Cores may come and go; on leaving, the calling thread's signal
    stack is the one it had on entering (Linux; elsewhere nothing to do)."""
    libc = _libc()
    saved = _StackT()
    if libc is None or libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        current = _StackT()
        libc.sigaltstack(None, ctypes.byref(current))
        if current.ss_sp != saved.ss_sp and not saved.ss_flags & 1:  # 1: SS_ONSTACK
            libc.sigaltstack(ctypes.byref(saved), None)


@functools.cache
def shared_core():
    """The process's one OpenVINO Core (thread-safe; see the note above on why only one)."""
    with kept_signal_stack():
        return load_openvino().Core()


def is_openvino_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an IR folder written by ``export --format openvino``."""
    path = Path(path)
    return path.is_dir() and (path / IR_FILE).is_file() and (path / METADATA_FILE).is_file()


def read_ir_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / METADATA_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsFileError(
            f"Could not read {path}: {exc}. Export the folder again with `unet-resnet export "
            "--format openvino`."
        ) from None


def convert(model: nn.Module, in_channels: int):
    """An eval-mode PyTorch model as an OpenVINO model with dynamic batch, height and width."""
    ov = load_openvino()
    example = torch.randn(1, in_channels, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes (deprecation, shape checks)
        return ov.convert_model(model, example_input=example, input=[(-1, in_channels, -1, -1)])


def inference_hint(precision: str) -> str:
    """OpenVINO's ``INFERENCE_PRECISION_HINT`` for our precision: what the layers that are not
    int8 compute in. ``int8`` models keep their float layers in bf16 where the CPU computes
    bf16 natively (as OpenVINO itself would), else in f32."""
    from unet_resnet.hardware import cpu_has_fast_bf16

    if precision == "bf16" or (precision == "int8" and cpu_has_fast_bf16()):
        return "bf16"
    return "f32"


class OpenVinoModel(RuntimeModel):
    """An OpenVINO model compiled for the CPU, callable like the PyTorch model.

    Args:
        model: an ``openvino.Model`` or the path of an IR ``model.xml``.
        metadata: the export metadata (model config, classes, normalisation).
        precision: ``fp32``, ``bf16`` (float models) or ``int8`` (a quantized IR).
        threads: inference threads (default: PyTorch's thread count, as the torch path).
    """

    backend = "openvino"

    def __init__(
        self, model, metadata: dict, *, precision: str = "fp32", threads: int | None = None
    ) -> None:
        super().__init__(metadata)
        core = shared_core()
        if isinstance(model, str | os.PathLike):
            model = core.read_model(str(model))
        self.precision = precision
        config = {
            "INFERENCE_PRECISION_HINT": inference_hint(precision),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        }
        with kept_signal_stack():
            self.compiled = core.compile_model(model, "CPU", config)
            self.request = self.compiled.create_infer_request()

    def run(self, array: np.ndarray) -> np.ndarray:
        return self.request.infer({0: array})[0]


def load_openvino_folder(folder: str | os.PathLike, precision: str = "auto"):
    """``(OpenVinoModel, export metadata)`` of an IR folder; ``precision`` ``auto`` runs the
    IR as it was made (int8, or float in bf16 where the CPU computes it natively)."""
    from unet_resnet.hardware import cpu_has_fast_bf16

    metadata = read_ir_metadata(folder)
    made = metadata.get("precision", "fp32")
    if made == "int8" and precision not in ("auto", "int8"):
        raise ConfigError(
            f"{folder} holds an int8 model; it runs as int8 (--precision auto). Export the "
            "checkpoint again without --precision int8 for a float model."
        )
    if precision in ("auto", "int8"):
        precision = made if made == "int8" else ("bf16" if cpu_has_fast_bf16() else "fp32")
    if precision == "fp16":
        raise ConfigError("The OpenVINO backend runs on the CPU: --precision fp32 or bf16.")
    return OpenVinoModel(Path(folder) / IR_FILE, metadata, precision=precision), metadata
