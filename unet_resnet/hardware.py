"""What the machine can do fast: bf16 on this CPU or GPU, and the device to use."""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

__all__ = [
    "DEVICE_CLASSES",
    "PRECISIONS",
    "PRECISION_ALIASES",
    "DeviceClass",
    "Precision",
    "auto_precision",
    "cache_dir",
    "configure_device",
    "cpu_has_fast_bf16",
    "cpu_signature",
    "cuda_capability",
    "cuda_device_count",
    "device_class",
    "resolve_device",
    "resolve_train_precision",
    "training_device",
]

#: One precision vocabulary for training and inference. Training runs the named precision as
#: mixed precision (fp32 master weights); inference casts the weights themselves.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
#: Lightning's spellings, accepted for configs written before the vocabulary was unified.
PRECISION_ALIASES = {"32": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}
_LIGHTNING = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32"}


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) under which bf16 still runs natively.
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_", "ALL", "DEFAULT")


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX), not by emulation.

    oneDNN runs bf16 on any AVX-512 CPU, but without these units it is slower than fp32, so
    "supported" is not enough to make it the default. A ``ONEDNN_MAX_CPU_ISA`` cap below
    AVX512_CORE_BF16 (how an AVX2-only CPU is simulated) counts as no native bf16: oneDNN then
    falls back to reference kernels, orders of magnitude slower.
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and not cap.startswith(_BF16_ISAS):
        return False
    return _cpu_flags_have_bf16()


@functools.cache
def _cpu_flags_have_bf16() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = cpuinfo.read_text(errors="ignore")
        return "avx512_bf16" in flags or "amx_bf16" in flags
    try:  # other systems: trust oneDNN's check
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_signature() -> dict[str, object]:
    """The CPU model, its matrix-unit flags, the oneDNN ISA cap and the thread count: what
    decides which inference path is fastest, and so what a measured choice is cached under."""
    model, flags = "", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {
        "model": model or "unknown",
        "flags": [f for f in wanted if f in flags],
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def cache_dir() -> Path:
    """Where the toolkit keeps machine-specific measurements: ``$UNET_RESNET_CACHE``, else
    ``$XDG_CACHE_HOME/unet-resnet``, else ``~/.cache/unet-resnet``."""
    if os.environ.get("UNET_RESNET_CACHE"):
        return Path(os.environ["UNET_RESNET_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unet-resnet"


def cuda_device_count() -> int:
    """CUDA devices visible to this process, without initialising CUDA where NVML answers
    (``torch.cuda.device_count`` asks NVML first), so a parent process that later forks
    training workers (Lightning's ``ddp_fork`` in notebooks) stays fork-safe."""
    try:
        return torch.cuda.device_count() if torch.backends.cuda.is_built() else 0
    except (RuntimeError, AssertionError):
        return 0


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else is passed to torch."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if cuda_device_count() > 0 else "cpu")
    return torch.device(device)


@functools.cache
def _nvml_capability(index: int) -> tuple[int, int] | None:
    """The compute capability of CUDA device ``index`` from NVML (the driver's management
    library), which does not create a CUDA context; None where NVML is not there."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    try:
        if nvml.nvmlInit_v2() != 0:
            return None
        handle = ctypes.c_void_p()
        major, minor = ctypes.c_int(), ctypes.c_int()
        if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
            return None
        found = nvml.nvmlDeviceGetCudaComputeCapability
        if found(handle, ctypes.byref(major), ctypes.byref(minor)) != 0:
            return None
        return major.value, minor.value
    except AttributeError:
        return None


def cuda_capability(index: int = 0) -> tuple[int, int] | None:
    """``(major, minor)`` compute capability of CUDA device ``index`` (None without CUDA).

    Asked of NVML while CUDA is not initialised in this process (choosing a precision must
    not initialise CUDA before Lightning forks its workers), else of torch."""
    if cuda_device_count() <= index:
        return None
    if not torch.cuda.is_initialized():
        found = _nvml_capability(index)
        if found is not None:
            return found
    return torch.cuda.get_device_capability(index)


@dataclass(frozen=True)
class DeviceClass:
    """What one class of device runs best: the one table training and inference read.

    ``precision`` is what ``auto`` means there. ``cpu_memory_reuse`` (glibc keeping freed
    memory, :func:`keep_freed_memory`) and ``cpu_packing`` (oneDNN-packed weights) are CPU-only
    tricks, off elsewhere. ``pin_memory`` (page-locked host batches, copied without blocking),
    ``cudnn_benchmark`` (cuDNN autotuning for fixed-size inputs) and ``tf32`` (fp32 matrix
    products on tensor cores, Ampere and later) are GPU settings.
    """

    name: str
    precision: str
    cpu_memory_reuse: bool = False
    cpu_packing: bool = False
    pin_memory: bool = False
    cudnn_benchmark: bool = False
    tf32: bool = False
    #: tiles per forward pass when left to ``auto``; None: as many as free memory holds
    tile_batch: int | None = None
    why: str = ""


#: Device classes by name; :func:`device_class` says which one a device is.
DEVICE_CLASSES: dict[str, DeviceClass] = {
    c.name: c
    for c in (
        DeviceClass(
            "cpu-bf16",
            "bf16",
            cpu_memory_reuse=True,
            cpu_packing=True,
            tile_batch=4,
            why="AVX-512 BF16 or AMX: bf16 runs natively",
        ),
        DeviceClass(
            "cpu",
            "fp32",
            cpu_memory_reuse=True,
            cpu_packing=True,
            tile_batch=4,
            why="no native bf16 units: bf16 would be emulated, slower than fp32",
        ),
        DeviceClass(
            "cuda-ampere",
            "bf16",
            pin_memory=True,
            cudnn_benchmark=True,
            tf32=True,
            why="compute capability 8.0 or later: bf16 and TF32 tensor cores",
        ),
        DeviceClass(
            "cuda-fp16",
            "fp16",
            pin_memory=True,
            cudnn_benchmark=True,
            why="compute capability 6.0 to 7.x (P100, V100, T4, RTX 20xx): fp16 tensor "
            "cores; bf16 would be emulated and its convolutions bypass cuDNN",
        ),
        DeviceClass(
            "cuda-fp32",
            "fp32",
            pin_memory=True,
            cudnn_benchmark=True,
            why="compute capability below 6.0 or 6.1/6.2 (consumer Pascal): slow half precision",
        ),
        DeviceClass("other", "fp32", tile_batch=4, why="a device without a tuned entry here"),
    )
}


def device_class(device: str | torch.device) -> DeviceClass:
    """The :data:`DEVICE_CLASSES` entry of ``device`` (``auto`` resolved first)."""
    device = resolve_device(device)
    if device.type == "cpu":
        return DEVICE_CLASSES["cpu-bf16" if cpu_has_fast_bf16() else "cpu"]
    if device.type == "cuda":
        capability = cuda_capability(device.index or 0)
        if capability is None:
            return DEVICE_CLASSES["cuda-fp32"]
        if capability >= (8, 0):
            return DEVICE_CLASSES["cuda-ampere"]
        if capability >= (7, 0) or capability == (6, 0):
            return DEVICE_CLASSES["cuda-fp16"]
        return DEVICE_CLASSES["cuda-fp32"]
    return DEVICE_CLASSES["other"]


def auto_precision(device: str | torch.device) -> str:
    """The fastest precision that keeps accuracy on ``device`` (a device or its type):
    the device class's (:data:`DEVICE_CLASSES`): bf16 on CPUs with native bf16 and on Ampere
    or later GPUs, fp16 on Volta/Turing GPUs, fp32 otherwise."""
    return device_class(device).precision


def configure_device(device: str | torch.device, *, precision: str, fixed_size: bool) -> None:
    """Process-wide settings for running on ``device`` at ``precision``: on GPUs of a class
    that has them, cuDNN autotuning when input sizes are fixed (training crops) and TF32
    matrix products and convolutions under mixed precision (for its fp32 parts). An explicit
    ``fp32`` means exact fp32: TF32 off for both (PyTorch's own default lets convolutions use
    it). Nothing on CPUs."""
    if resolve_device(device).type != "cuda":
        return
    cls = device_class(device)
    if cls.cudnn_benchmark and fixed_size:
        torch.backends.cudnn.benchmark = True
    if cls.tf32:
        exact = precision == "fp32"
        torch.backends.cuda.matmul.allow_tf32 = not exact
        torch.backends.cudnn.allow_tf32 = not exact


def resolve_train_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning's precision string for one of :data:`PRECISIONS` (``auto``:
    :func:`auto_precision` for the device training will run on, as mixed precision)."""
    precision = PRECISION_ALIASES.get(precision, precision)
    if precision == "auto":
        precision = auto_precision(training_device(accelerator))
    return _LIGHTNING[precision]


def training_device(accelerator: str = "auto") -> str:
    """The device type Lightning will train on for ``accelerator`` (without initialising
    CUDA): ``cuda`` for gpu/cuda, and for auto where a CUDA device is visible; else ``cpu``."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_device_count() > 0):
        return "cuda"
    return "cpu"
