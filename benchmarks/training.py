"""Training step: the guide's plain fp32 loop against our defaults, each in its own process."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import in_subprocess, matmul_tflops, peak_rss_mb, timeit
from unet_resnet.accel.memory import keep_freed_memory


def training_step(variant: str, size: int, batch: int, classes: int = 4) -> Callable[[], None]:
    """One training step of the guide's model as ``variant`` runs it: ``guide_plain_fp32``
    (the guide's loop, verbatim), ``channels_last_fp32`` / ``channels_last_bf16_mixed`` (a
    plain loop with channels_last, fused Adam and autocast), ``default_bf16_mixed`` /
    ``default_fp32`` (as ``unet-resnet train`` runs it: also the GEMM layers, our fused Adam
    that updates channels_last weights without copies, and the batch in the autocast dtype;
    run it inside :func:`keep_freed_memory` as ``train`` does)."""
    import torch.nn.functional as F

    from unet_resnet.models import UNetWithResnet50Encoder

    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(classes, encoder_weights=None).train()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch, size, size))
    if variant == "guide_plain_fp32":
        optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
        autocast = False
    else:
        from unet_resnet.accel.optim import Adam
        from unet_resnet.training import use_gemm_convolutions

        model = model.to(memory_format=torch.channels_last)
        if variant.startswith("default_"):
            use_gemm_convolutions(model)
        x = x.contiguous(memory_format=torch.channels_last)
        adam = Adam if variant.startswith("default_") else torch.optim.Adam
        optimizer = adam(model.parameters(), lr=0.001, fused=True)
        autocast = variant.endswith("bf16_mixed")

    # SegmentationModule hands the model its batch in the autocast dtype (the input is also
    # the decoder's last skip); the other variants are what a plain loop does.
    inputs = x.to(torch.bfloat16) if variant == "default_bf16_mixed" else x

    def step() -> None:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(inputs).float(), y)
        loss.backward()
        optimizer.step()

    return step


def _train_worker(variant: str, size: int, batch: int, steps: int, queue) -> None:
    """One training variant in a fresh process, so its peak memory is its own. The bf16
    matmul peak is measured here too, just before and after the steps: on a shared machine
    it moves by a third between minutes, so a fraction of a peak measured elsewhere and
    earlier says more about the neighbours than about the step."""
    step = training_step(variant, size, batch)
    peaks = [matmul_tflops(torch.bfloat16, 4096)]
    with keep_freed_memory(variant.startswith("default_")):  # as train() runs the steps
        times = timeit(step, reps=steps)
    peaks.append(matmul_tflops(torch.bfloat16, 4096))
    peak_mb = peak_rss_mb()
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # forward + backward, one step
        step()
    queue.put(
        {
            "variant": variant,
            "size": size,
            "batch": batch,
            "images_per_s": batch / statistics.median(times),
            "gflop_per_step": counter.get_total_flops() / 1e9,
            "step_s": statistics.median(times),
            "peak_rss_mb": peak_mb,
            "bf16_peak_tflops": max(peaks),  # the higher: the fraction is not flattered
        }
    )


VARIANTS = (
    "guide_plain_fp32",
    "channels_last_fp32",
    "channels_last_bf16_mixed",
    "default_bf16_mixed",
)


def bench_training(
    size: int = 256,
    batch: int = 8,
    steps: int = 3,
    peak: float | None = None,
    variants: tuple[str, ...] = VARIANTS,
) -> list[dict[str, Any]]:
    """Images/s of fwd+bwd+step: the guide's plain fp32 loop vs our defaults, and the
    achieved fraction of the bf16 matmul peak measured beside each variant (``peak``, the
    run's, when a worker has none)."""
    rows = [in_subprocess(_train_worker, v, size, batch, steps) for v in variants]
    base = rows[0]["images_per_s"]
    # One FLOP count for every row, the guide's model as written (convolutions): the GEMM
    # layers of the default variant count the same work differently.
    gflop = rows[0]["gflop_per_step"]
    for row in rows:
        row["speedup_vs_guide_loop"] = row["images_per_s"] / base
        here = row.get("bf16_peak_tflops") or peak
        if here:
            row["fraction_of_bf16_peak"] = gflop / row["step_s"] / (here * 1000)
    return rows
