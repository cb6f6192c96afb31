"""Encoders: the guide's ResNet-50 against timm backbones in the same U-Net, one run.

Per encoder: parameters, GFLOP per image, the Segmenter's default path (fast path chosen by
measurement) in images/s and as a fraction of the bf16 matmul peak, and its speed-up over
eager fp32 and over the best plain recipe (eager fp32 or ``torch.autocast(bf16)`` +
channels_last) of the same model. Random init: speed does not depend on the weights.

The fraction of the bf16 matmul peak is the wrong yardstick for depthwise and grouped
convolutions (EfficientNet, MobileNet, RegNet), which move many bytes per FLOP; so each row
also has a roofline (:func:`benchmarks.common.roofline_seconds`: every operator at the larger
of its FLOPs at the peak and its bytes at the copy bandwidth measured in the same run) and
the default path's fraction of it.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import copy_gbps, model_gflop, roofline_seconds, stats, timeit
from benchmarks.inference import plain_variants

#: The guide's encoder and one common member of each timm family.
ENCODERS = (
    "resnet50",
    "tu-resnet50",
    "tu-convnext_tiny",
    "tu-efficientnet_b0",
    "tu-mobilenetv3_large_100",
    "tu-regnety_008",
)


def bench_encoders(
    peak: float | None,
    *,
    encoders: tuple[str, ...] | None = None,
    size: int = 512,
    batch: int = 1,
    reps: int = 3,
) -> list[dict[str, Any]]:
    from unet_resnet.inference import Segmenter
    from unet_resnet.models import UNetWithResnet50Encoder

    rows = []
    gbps = copy_gbps()
    for encoder in encoders or ENCODERS:
        try:
            torch.manual_seed(0)
            model = UNetWithResnet50Encoder(2, encoder=encoder, encoder_weights=None).eval()
        except ImportError:
            continue  # timm not installed: the torchvision rows still run
        gflop = model_gflop(model, size)
        fast = Segmenter(model)
        x = torch.randn(batch, 3, size, size)
        plain = plain_variants(model)
        with torch.inference_mode():
            times = {name: timeit(lambda f=f, x=x: f(x), reps=reps) for name, f in plain.items()}
            default = timeit(lambda f=fast, x=x: f.probabilities(x), reps=reps)
        p50 = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
        row = {
            "encoder": encoder,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "size": size,
            "batch": batch,
            "gflop_per_image": gflop,
            **stats(default, batch, gflop, peak),
            **{f"{name}_p50_s": seconds for name, seconds in p50.items()},
            "chosen": f"{fast.fastpath.precision}{'+packed' if fast.fastpath.packed else ''}",
            "layers_left_plain": len(fast.fastpath.plain_layers),
        }
        row["speedup_vs_eager_fp32"] = row["eager_fp32_p50_s"] / row["latency_p50_s"]
        row["speedup_vs_best_plain"] = min(p50.values()) / row["latency_p50_s"]
        row["copy_gbps"] = gbps
        if peak:
            row["roofline_s"] = roofline_seconds(model, size, peak, gbps) * batch
            row["fraction_of_roofline"] = row["roofline_s"] / row["latency_p50_s"]
        rows.append(row)
    return rows
