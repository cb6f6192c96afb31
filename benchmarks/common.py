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
    "cpu_info",
    "in_subprocess",
    "machine_info",
    "matmul_tflops",
    "model_gflop",
    "peak_rss_mb",
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


def bench_peak() -> dict[str, float]:
    """Large matrix products: the machine's practical ceiling for each dtype."""
    return {
        "bf16_matmul_tflops": matmul_tflops(torch.bfloat16, 4096),
        "fp32_matmul_tflops": matmul_tflops(torch.float32, 2048),
    }


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
