"""Measuring helpers shared by the benchmark sections: timing, peaks, memory, machine info."""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "bench_peak",
    "copy_gbps",
    "cpu_info",
    "in_subprocess",
    "machine_info",
    "matmul_tflops",
    "model_gflop",
    "peak_rss_mb",
    "roofline_seconds",
    "stats",
    "timeit",
]


def peak_rss_mb() -> float:
    """This process's peak resident memory. ``VmHWM`` starts afresh at exec, unlike
    ``ru_maxrss``, which a spawned child inherits from the parent that forked it."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timeit(fn: Callable[[], Any], *, reps: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def matmul_tflops(dtype: torch.dtype, n: int, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    times = timeit(lambda: a @ b, reps=reps)
    return 2 * n**3 / min(times) / 1e12


def openvino_matmul_tflops(precision: str, n: int, reps: int = 5) -> float | None:
    """The same product through OpenVINO (``bf16`` or ``f32`` inference precision), or None
    without it: another implementation of the same ceiling."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return None
    import numpy as np

    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32)
    product = ops.matmul(a, ops.constant(rng.standard_normal((n, n), np.float32)), False, False)
    from unet_resnet.inference.openvino import shared_core

    compiled = shared_core().compile_model(
        ov.Model([product], [a]), "CPU", {"INFERENCE_PRECISION_HINT": precision}
    )
    x = rng.standard_normal((n, n), np.float32)
    request = compiled.create_infer_request()
    times = timeit(lambda: request.infer({0: x}), reps=reps)
    return 2 * n**3 / min(times) / 1e12


def bench_peak() -> dict[str, float]:
    """Large matrix products: the machine's practical ceiling for each dtype, the best of
    the implementations measured here (torch, and OpenVINO where installed): one
    implementation's slow day must not make every model look above "peak"."""
    measured = {
        "torch_bf16_matmul_tflops": matmul_tflops(torch.bfloat16, 4096),
        "torch_fp32_matmul_tflops": matmul_tflops(torch.float32, 2048),
    }
    from unet_resnet.hardware import cpu_has_fast_bf16

    if cpu_has_fast_bf16():
        measured["openvino_bf16_matmul_tflops"] = openvino_matmul_tflops("bf16", 4096)
    measured["openvino_fp32_matmul_tflops"] = openvino_matmul_tflops("f32", 2048)
    measured = {k: v for k, v in measured.items() if v is not None}
    return {
        "bf16_matmul_tflops": max(v for k, v in measured.items() if "bf16" in k),
        "fp32_matmul_tflops": max(v for k, v in measured.items() if "fp32" in k),
        **measured,
    }


def copy_gbps(megabytes: int = 512, reps: int = 5) -> float:
    """Memory bandwidth in GB/s: a large bf16 copy (each byte read once and written once),
    best of ``reps``."""
    src = torch.ones(megabytes * 2**20 // 2, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    seconds = min(timeit(lambda: dst.copy_(src), reps=reps))
    return 2 * src.numel() * src.element_size() / seconds / 1e9


#: Activations that a fast path fuses into the convolution before them (no pass of their own).
_FUSABLE = ("relu", "relu_", "silu", "silu_", "hardswish", "hardswish_", "gelu", "gelu_")


def roofline_seconds(model: torch.nn.Module, size: int, tflops: float, gbps: float) -> float:
    """A lower bound on one bf16 forward pass at ``size`` (batch 1): every operator of the
    model's forward at the larger of its FLOPs at the matmul peak (``tflops``) and its bytes at
    the copy bandwidth (``gbps``), bytes being its inputs (weights included) read once and its
    outputs written once, 2 bytes an element. BatchNorms are folded first and an activation
    right after a convolution counts nothing (both are fused in the fast path); views are free.
    Depthwise and small layers are bound by bytes, not FLOPs: this says what they can reach."""
    import copy

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import flop_registry

    from unet_resnet.accel.fastpath import fold_batchnorm

    x = torch.randn(1, model.in_channels, size, size)
    folded = fold_batchnorm(copy.deepcopy(model).eval(), x[..., :64, :64])

    class Roofline(TorchDispatchMode):
        seconds = 0.0
        conv_out: torch.Tensor | None = None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            packet = func._overloadpacket
            inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            if func.is_view or not outputs:
                return out
            if packet.__name__ in _FUSABLE and inputs and inputs[0] is self.conv_out:
                self.conv_out = outputs[0]  # fused: the convolution writes this instead
                return out
            flops = (
                flop_registry[packet](*args, **kwargs, out_val=out)
                if packet in flop_registry
                else 0
            )
            moved = 2 * sum(t.numel() for t in inputs + outputs)
            self.seconds += max(flops / (tflops * 1e12), moved / (gbps * 1e9))
            self.conv_out = (
                outputs[0] if packet.__name__ in ("convolution", "_convolution") else None
            )
            return out

    mode = Roofline()
    with torch.no_grad(), mode:  # (inference_mode would hide conv2d's decomposition)
        folded(x)
    return mode.seconds


def model_gflop(model: torch.nn.Module, size: int) -> float:
    """GFLOP of one forward pass (a multiply-add counts 2), by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, model.in_channels, size, size))
    return counter.get_total_flops() / 1e9


def stats(times: list[float], batch: int, gflop: float, peak: float | None) -> dict[str, float]:
    p50 = statistics.median(times)
    p95 = sorted(times)[max(0, round(0.95 * len(times)) - 1)]
    row = {
        "images_per_s": batch / p50,
        "latency_p50_s": p50,
        "latency_p95_s": p95,
        "gflops": gflop * batch / p50,
    }
    if peak:
        row["fraction_of_bf16_peak"] = row["gflops"] / (peak * 1000)
    return row


def in_subprocess(target, *args) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def cpu_info() -> dict[str, Any]:
    """The CPU model and the instruction-set flags that decide the fast paths (Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {
        "model": model,
        "flags": [f for f in wanted if f in flags],
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
    }


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
