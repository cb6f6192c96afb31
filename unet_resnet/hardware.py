"""What the machine can do fast: bf16 on this CPU or GPU, and the device to use."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

import torch

__all__ = [
    "PRECISIONS",
    "PRECISION_ALIASES",
    "Precision",
    "auto_precision",
    "cache_dir",
    "cpu_has_fast_bf16",
    "cpu_signature",
    "keep_freed_memory",
    "resolve_device",
    "resolve_train_precision",
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


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def auto_precision(device_type: str) -> str:
    """The fastest precision that keeps accuracy: ``bf16`` where the hardware runs it natively,
    ``fp16`` on GPUs without bf16, ``fp32`` otherwise."""
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def resolve_train_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning's precision string for one of :data:`PRECISIONS` (``auto``:
    :func:`auto_precision` for the device training will run on, as mixed precision)."""
    precision = PRECISION_ALIASES.get(precision, precision)
    if precision == "auto":
        use_cuda = accelerator in ("gpu", "cuda") or (
            accelerator == "auto" and torch.cuda.is_available()
        )
        precision = auto_precision("cuda" if use_cuda else "cpu")
    return _LIGHTNING[precision]


# glibc's mallopt parameters (malloc.h) and its defaults, restored afterwards.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int] * 2, [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_kept_depth = 0
_kept_lock = threading.Lock()


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, memory freed by the process is kept for reuse (glibc on Linux).

    glibc serves every large block (a tensor of more than a few hundred KB; above 32 MB even
    after its threshold has adapted) with a fresh ``mmap`` and unmaps it when freed, so the
    next training step or prediction touches all its activations as new pages: measured on
    the guide's model at 256x256, batch 8, about 930,000 page faults per training step, a
    quarter of the step's time; at 512x512 inference 37,000-46,000 faults per image, 12-20%
    of it. Here large blocks come from the heap and freed memory stays there (the heap holds
    the peak of the work done inside, as PyTorch's CUDA allocator does on a GPU); on leaving
    the outermost block, the defaults are set back and the unused memory is returned to the
    system. Blocks nest (training inside a command that keeps memory, a file's tiles inside
    a folder's). Yields whether it took effect (False when ``enabled`` is False or the C
    library is not glibc)."""
    global _kept_depth
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    with _kept_lock:
        if _kept_depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        _kept_depth += 1
    try:
        yield True
    finally:
        with _kept_lock:
            _kept_depth -= 1
            if _kept_depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
