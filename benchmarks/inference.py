"""Inference: the guide's model, eager fp32 against the Segmenter's fast path (and compiled,
ONNX Runtime)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import model_gflop, stats, timeit


def bench_inference(
    peak: float | None,
    *,
    sizes=(256, 512),
    batches=(1, 4),
    reps: int = 5,
    compile: bool = False,
    onnx: bool = True,
) -> list[dict[str, Any]]:
    """Guide's model: eager fp32 vs the Segmenter fast path (vs compiled, vs ONNX Runtime)."""
    from unet_resnet.inference import Segmenter
    from unet_resnet.models import UNetWithResnet50Encoder

    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(2, encoder_weights=None).eval()
    fast = Segmenter(model, precision="auto")
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "eager_fp32": lambda x: model(x).softmax(1),
        f"fast_{fast.precision}": fast.probabilities,
    }
    first_call: dict[str, float] = {}
    if compile:
        compiled = Segmenter(model, precision="auto", compile=True)
        start = time.perf_counter()
        compiled.probabilities(torch.randn(1, 3, sizes[0], sizes[0]))
        first_call["compiled"] = time.perf_counter() - start
        variants[f"compiled_{compiled.precision}"] = compiled.probabilities
    if onnx:
        try:
            from unet_resnet.checkpoint import CheckpointMeta, save_checkpoint
            from unet_resnet.data import ClassInfo
            from unet_resnet.export import export_model

            tmp = Path(tempfile.mkdtemp())
            save_checkpoint(tmp / "m.pt", model, CheckpointMeta(model.config, ClassInfo.generic(2)))
            export_model(tmp / "m.pt", tmp / "m.onnx")
            ort_seg = Segmenter.from_onnx(tmp / "m.onnx")
            variants["onnxruntime_fp32"] = ort_seg.probabilities
        except ImportError:
            pass
    rows = []
    for size in sizes:
        gflop = model_gflop(model, size)
        for batch in batches:
            x = torch.randn(batch, 3, size, size)
            eager_p50 = None
            for name, fn in variants.items():
                with torch.inference_mode():
                    times = timeit(
                        lambda fn=fn, x=x: fn(x), reps=reps if size <= 256 else max(3, reps - 2)
                    )
                row = {
                    "variant": name,
                    "size": size,
                    "batch": batch,
                    "gflop_per_image": gflop,
                    **stats(times, batch, gflop, peak),
                }
                if name == "eager_fp32":
                    eager_p50 = row["latency_p50_s"]
                row["speedup_vs_eager_fp32"] = eager_p50 / row["latency_p50_s"]
                rows.append(row)
    for row in rows:
        if row["variant"].startswith("compiled"):
            row["first_call_s"] = first_call.get("compiled")
    return rows
