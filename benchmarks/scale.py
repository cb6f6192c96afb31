"""Prediction engines: the local engine against Ray with 1 and 2 workers, same inputs.

Wall time of the whole ``predict`` call (actors build their Segmenter inside it; the Ray
instance itself is started before timing, as on a running cluster). ``vs local`` is the local
engine's time over the engine's time; ``without start-up`` uses the busiest actor's time on
inputs instead (what a long job converges to). The goal is at least 0.9 at 1 worker.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def bench_scale(*, n: int = 24, size: int = 512) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        return []
    from PIL import Image

    from unet_resnet.checkpoint import CheckpointMeta, save_checkpoint
    from unet_resnet.data import ClassInfo
    from unet_resnet.inference.files import plan_predictions, predict_files
    from unet_resnet.inference.scale import model_hash, predict_with_ray
    from unet_resnet.inference.segmenter import Segmenter
    from unet_resnet.models import UNetWithResnet50Encoder

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(4, encoder="resnet18", encoder_weights=None).eval()
    checkpoint = tmp / "model.pt"
    save_checkpoint(checkpoint, model, CheckpointMeta(model.config, ClassInfo.generic(4)))
    rng = np.random.default_rng(0)
    inputs = tmp / "inputs"
    inputs.mkdir()
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(inputs / f"{i:03d}.png")
    Segmenter.from_checkpoint(checkpoint)  # the fast-path choice cached for every engine
    rows = []
    start = time.perf_counter()
    predict_files(Segmenter.from_checkpoint(checkpoint), plan_predictions([str(inputs)], tmp / "l"))
    local = time.perf_counter() - start
    rows.append({"engine": "local", "workers": 1, "seconds": local, "inputs_per_s": n / local})
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        for workers in (1, 2):
            plan = plan_predictions([str(inputs)], tmp / f"r{workers}")
            start = time.perf_counter()
            predict_with_ray(
                plan, [str(checkpoint)], {}, model=model_hash([checkpoint]), workers=workers,
                cpus_per_worker=cpus / workers, progress=False,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            report = json.loads((tmp / f"r{workers}" / "predict_report.json").read_text())
            busy = max(w["busy_seconds"] for w in report["per_worker"].values())
            rows.append(
                {
                    "engine": "ray",
                    "workers": workers,
                    "seconds": seconds,
                    "inputs_per_s": n / seconds,
                    "busy_seconds": busy,  # the busiest actor's time on inputs: no start-up
                }
            )
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    for row in rows:
        row["vs_local"] = local / row["seconds"]
        row["vs_local_without_startup"] = local / row.get("busy_seconds", row["seconds"])
        row["inputs"], row["size"] = n, size
    return rows
