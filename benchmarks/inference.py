"""Inference: the Segmenter's default path against the best plain PyTorch a user would write.

Per model (the guide's U-Net, and the same with a light decoder), size and batch: eager fp32,
``torch.autocast(bf16)`` + channels_last (the two lines a user writes), the Segmenter's
default path (``precision="auto"``, ``pack_weights="auto"``: chosen by measurement on this
CPU), and optionally the compiled path and ONNX Runtime. ``vs best plain`` is the default
path's speed over the faster of eager fp32 and autocast: at least 1 is the target.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import model_gflop, stats, timeit

#: name -> UNetWithResnet50Encoder keyword arguments.
MODELS = {
    "guide": {},
    "light_decoder": {"decoder_channels": (256, 128, 64, 32, 16)},
}
PLAIN = ("eager_fp32", "autocast_bf16_cl")


def plain_variants(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Eager fp32, and autocast bf16 + channels_last where the CPU runs bf16 natively (without
    it oneDNN falls back to reference kernels, minutes per image: nobody's best plain path)."""
    import copy

    from unet_resnet.hardware import cpu_has_fast_bf16

    cl = copy.deepcopy(model)  # channels_last copy for autocast; ``model`` stays as it is
    cl = cl.to(memory_format=torch.channels_last)

    def autocast(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return cl(x.contiguous(memory_format=torch.channels_last)).float().softmax(1)

    variants = {"eager_fp32": lambda x: model(x).softmax(1)}
    if cpu_has_fast_bf16():
        variants["autocast_bf16_cl"] = autocast
    return variants


def bench_inference(
    peak: float | None,
    *,
    sizes=(256, 512),
    batches=(1, 4),
    reps: int = 5,
    compile: bool = False,
    onnx: bool = True,
    models: tuple[str, ...] = tuple(MODELS),
) -> list[dict[str, Any]]:
    from unet_resnet.inference import Segmenter
    from unet_resnet.models import UNetWithResnet50Encoder

    rows = []
    for model_name in models:
        torch.manual_seed(0)
        model = UNetWithResnet50Encoder(2, encoder_weights=None, **MODELS[model_name]).eval()
        start = time.perf_counter()
        fast = Segmenter(model)  # builds the fast path: calibrates on a first build
        build_s = time.perf_counter() - start
        variants = plain_variants(model)
        variants["default"] = fast.probabilities
        first_call: dict[str, float] = {}
        if compile and model_name == "guide":
            compiled = Segmenter(model, compile=True)
            start = time.perf_counter()
            compiled.probabilities(torch.randn(1, 3, sizes[0], sizes[0]))
            first_call["compiled"] = time.perf_counter() - start
            variants[f"compiled_{compiled.precision}"] = compiled.probabilities
        if onnx and model_name == "guide":
            try:
                from unet_resnet.checkpoint import CheckpointMeta, save_checkpoint
                from unet_resnet.data import ClassInfo
                from unet_resnet.export import export_model

                with tempfile.TemporaryDirectory(prefix="bench-onnx-") as folder:
                    tmp = Path(folder)
                    meta = CheckpointMeta(model.config, ClassInfo.generic(2))
                    save_checkpoint(tmp / "m.pt", model, meta)
                    export_model(tmp / "m.pt", tmp / "m.onnx")
                    onnx_segmenter = Segmenter.from_onnx(tmp / "m.onnx")  # read into memory
                variants["onnxruntime_fp32"] = onnx_segmenter.probabilities
            except ImportError:
                pass
        for size in sizes:
            gflop = model_gflop(model, size)
            for batch in batches:
                x = torch.randn(batch, 3, size, size)
                group = []
                for name, fn in variants.items():
                    with torch.inference_mode():
                        times = timeit(
                            lambda fn=fn, x=x: fn(x),
                            reps=reps if size <= 256 else max(3, reps - 2),
                        )
                    row = {
                        "model": model_name,
                        "variant": name,
                        "size": size,
                        "batch": batch,
                        "gflop_per_image": gflop,
                        **stats(times, batch, gflop, peak),
                    }
                    if name == "default":
                        row["chosen"] = (
                            f"{fast.fastpath.precision}{'+packed' if fast.fastpath.packed else ''}"
                        )
                        row["build_s"] = build_s
                        row["choice_source"] = fast.fastpath.source
                    if name.startswith("compiled"):
                        row["first_call_s"] = first_call.get("compiled")
                    group.append(row)
                p50 = {r["variant"]: r["latency_p50_s"] for r in group}
                best_plain = min(p50[v] for v in PLAIN if v in p50)
                for row in group:
                    row["speedup_vs_eager_fp32"] = p50["eager_fp32"] / row["latency_p50_s"]
                    row["speedup_vs_best_plain"] = best_plain / row["latency_p50_s"]
                rows.extend(group)
    return rows
