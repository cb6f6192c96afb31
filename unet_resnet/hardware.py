"""What the machine can do fast: bf16 on this CPU or GPU, and the device to use."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["cpu_has_fast_bf16", "resolve_device", "resolve_train_precision"]


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX), not by emulation.

    oneDNN runs bf16 on any AVX-512 CPU, but without these units it is slower than fp32, so
    "supported" is not enough to make it the default.
    """
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = cpuinfo.read_text(errors="ignore")
        return "avx512_bf16" in flags or "amx_bf16" in flags
    try:  # other systems: trust oneDNN's check
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_train_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning precision for ``auto``: bf16-mixed where the hardware runs it fast, else 32."""
    if precision != "auto":
        return precision
    use_cuda = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32"
