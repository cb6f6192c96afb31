"""Where a training step's time goes: the default step of the guide's model, profiled.

The training fraction of the peak (``training`` section) is one number; this section splits
the step into what runs on the matrix units and what only moves memory, so the gap between
them is read off a table instead of argued. Each profiled operator's own time goes to one
category of :data:`CATEGORIES`:

- **matrix** categories (oneDNN convolutions forward and backward, the GEMM layers' matrix
  products) carry the step's FLOPs, counted once with ``torch.utils.flop_counter`` as the
  ``training`` section does; their share of the step and the fraction of the peak they reach
  *while they run* bound the whole step: with every other operator free, the step would run
  at that fraction.
- **memory** categories (batch norm, activations, gradient adds, copies and casts, the fused
  optimiser) do a few operations per byte; each row's effective bandwidth (bytes of its
  tensor arguments and one result the size of the first, over its time) is compared with two
  copies measured in the same process: one that fits in the last-level cache and one that
  does not. In a step whose activations do not fit in cache, the second is their ceiling.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch

from benchmarks.common import copy_gbps, in_subprocess, matmul_tflops, timeit
from unet_resnet.accel.memory import keep_freed_memory

#: Profiled operator -> the part of a training step it belongs to; operators not listed
#: (the loss, pooling, framework calls) are "other".
CATEGORIES = {
    "aten::mkldnn_convolution": "convolution",
    "aten::convolution_backward": "convolution",
    "aten::mm": "matrix product",
    "aten::addmm": "matrix product",
    "aten::bmm": "matrix product",
    "aten::native_batch_norm": "batch norm",
    "aten::native_batch_norm_backward": "batch norm",
    "aten::relu": "activation",
    "aten::relu_": "activation",
    "aten::clamp_min": "activation",
    "aten::clamp_min_": "activation",
    "aten::threshold_backward": "activation",
    "aten::add": "gradient and residual adds",
    "aten::add_": "gradient and residual adds",
    "aten::copy_": "copies and casts",
    "aten::cat": "copies and casts",
    "aten::fill_": "copies and casts",
    "aten::zero_": "copies and casts",
    "aten::_fused_adam_": "optimizer",
    "aten::_fused_adamw_": "optimizer",
}
MATRIX = ("convolution", "matrix product")

_ITEMSIZE = {"float": 4, "c10::BFloat16": 2, "c10::Half": 2, "double": 8, "long int": 8}


class OpTime(NamedTuple):
    """One profiled operator call: its name, own time and tensor arguments."""

    name: str
    seconds: float
    shapes: list
    dtypes: list


def tensor_bytes(op: OpTime) -> int:
    """The least an elementwise or reducing operator moves: each tensor argument read once
    and a result the size of the first written once (batch norm's backward reads its two
    large tensors twice; the profiler records no sizes for list arguments, as ``cat`` and
    the fused optimiser take, which count 0)."""
    sizes = [
        _ITEMSIZE[dtype] * math.prod(shape)
        for shape, dtype in zip(op.shapes, op.dtypes, strict=False)
        if dtype in _ITEMSIZE and shape
    ]
    return sum(sizes) + (sizes[0] if sizes else 0)


def breakdown(
    ops: Iterable[OpTime], step_s: float, gflop: float, peak_tflops: float
) -> tuple[list[dict[str, Any]], float | None]:
    """Rows per category, largest first: own time, share of ``step_s`` and, for memory
    categories, the effective GB/s (None where no sizes were recorded); and the fraction of
    the peak the matrix categories reach while they run (they carry the step's FLOPs)."""
    seconds: dict[str, float] = {}
    moved: dict[str, int] = {}
    for op in ops:
        category = CATEGORIES.get(op.name, "other")
        seconds[category] = seconds.get(category, 0.0) + op.seconds
        if category not in MATRIX:
            moved[category] = moved.get(category, 0) + tensor_bytes(op)
    matrix_s = sum(seconds.get(c, 0.0) for c in MATRIX)
    rows = []
    for category, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        row: dict[str, Any] = {"category": category, "ms": 1000 * s, "share": s / step_s}
        if category in MATRIX:
            row["kind"] = "matrix"
        elif category != "other":
            row["kind"] = "memory"
            row["gbps"] = moved[category] / s / 1e9 if moved[category] and s else None
        else:
            row["kind"] = "other"
        rows.append(row)
    matrix_fraction = gflop / matrix_s / (peak_tflops * 1e3) if matrix_s else None
    return rows, matrix_fraction


def _profile_worker(size: int, batch: int, queue) -> None:
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.training import training_step

    step = training_step("default_bf16_mixed", size, batch)
    peaks = [matmul_tflops(torch.bfloat16, 4096)]  # beside the steps, as `training` does
    with keep_freed_memory():  # as train() runs the steps
        step_s = statistics.median(timeit(step, reps=3, warmup=2))
        peaks.append(matmul_tflops(torch.bfloat16, 4096))
        peak = max(peaks)  # the higher: the fraction is not flattered
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
        with FlopCounterMode(display=False) as counter:
            step()
    # Copies of 32 MB (source and destination fit in cache) and of 1 GB (they do not).
    cached, uncached = copy_gbps(32, reps=9), copy_gbps(1024, reps=3)
    ops = [
        OpTime(e.name, e.self_cpu_time_total / 1e6, e.input_shapes, e.input_dtypes)
        for e in prof.events()
        if e.name.startswith("aten::")
    ]
    profiled_s = sum(op.seconds for op in ops)
    gflop = counter.get_total_flops() / 1e9
    rows, matrix_fraction = breakdown(ops, profiled_s, gflop, peak)
    queue.put(
        {
            "size": size,
            "batch": batch,
            "step_s": step_s,
            "profiled_s": profiled_s,
            "gflop_per_step": gflop,
            "bf16_peak_tflops": peak,
            "fraction_of_bf16_peak": gflop / step_s / (peak * 1e3),
            "matrix_share": sum(r["share"] for r in rows if r["kind"] == "matrix"),
            "matrix_fraction_of_bf16_peak": matrix_fraction,
            "copy_gbps_in_cache": cached,
            "copy_gbps_out_of_cache": uncached,
            "categories": rows,
        }
    )


def bench_profile(size: int = 256, batch: int = 8) -> dict[str, Any]:
    """Profile one default training step of the guide's model in a fresh process."""
    return in_subprocess(_profile_worker, size, batch)
