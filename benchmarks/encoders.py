"""Encoders: the guide's ResNet-50 against timm backbones in the same U-Net, one run.

Per encoder: parameters, GFLOP per image, the Segmenter's default path (fast path chosen by
measurement) in images/s and as a fraction of the bf16 matmul peak, and its speed-up over
eager fp32 of the same model. Random init: speed does not depend on the weights.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import model_gflop, stats, timeit

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
    for encoder in encoders or ENCODERS:
        try:
            torch.manual_seed(0)
            model = UNetWithResnet50Encoder(2, encoder=encoder, encoder_weights=None).eval()
        except ImportError:
            continue  # timm not installed: the torchvision rows still run
        gflop = model_gflop(model, size)
        fast = Segmenter(model)
        x = torch.randn(batch, 3, size, size)
        with torch.inference_mode():
            eager = timeit(lambda m=model, x=x: m(x).softmax(1), reps=reps)
            default = timeit(lambda f=fast, x=x: f.probabilities(x), reps=reps)
        row = {
            "encoder": encoder,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "size": size,
            "batch": batch,
            "gflop_per_image": gflop,
            **stats(default, batch, gflop, peak),
            "eager_fp32_p50_s": sorted(eager)[len(eager) // 2],
            "chosen": f"{fast.fastpath.precision}{'+packed' if fast.fastpath.packed else ''}",
        }
        row["speedup_vs_eager_fp32"] = row["eager_fp32_p50_s"] / row["latency_p50_s"]
        rows.append(row)
    return rows
