"""Tiled GeoTIFF prediction: seconds against tiles x single-batch time, and peak memory."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import in_subprocess, peak_rss_mb, timeit


def _write_scene(path: Path, side: int) -> None:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    block = 1024
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=side,
        height=side,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 1, 1),
        tiled=True,
        compress="deflate",
    ) as dst:
        tile = rng.integers(0, 255, (3, block, block), dtype=np.uint8)
        for top in range(0, side, block):
            for left in range(0, side, block):
                h, w = min(block, side - top), min(block, side - left)
                dst.write(tile[:, :h, :w], window=Window(left, top, w, h))


def _tiling_worker(scene: str, tile: int, batch: int, queue) -> None:
    from unet_resnet.grid import chunk_margin, chunk_windows, count_tiles
    from unet_resnet.inference import Segmenter
    from unet_resnet.models import UNetWithResnet50Encoder

    torch.manual_seed(0)
    # The property measured is tiling overhead and memory, not the encoder: a light model
    # keeps a 16k scene inside minutes on a CPU.
    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None)
    seg = Segmenter(model, tile_size=tile, overlap=0.25, batch_size=batch)
    x = torch.randn(batch, 3, tile, tile)
    import rasterio

    with rasterio.open(scene) as src:
        side = src.width
    out = Path(scene).with_name("pred.tif")
    # The single-batch time is taken before and after the scene, so a machine that slows
    # down (or speeds up) during a long run shifts both sides of the ratio alike.
    batch_times = timeit(lambda: seg.probabilities(x), reps=5)
    start = time.perf_counter()
    seg.predict_file(scene, out, chunk_size=4096)
    seconds = time.perf_counter() - start
    batch_times += timeit(lambda: seg.probabilities(x), reps=5, warmup=0)
    batch_time = statistics.median(batch_times)
    # Tiles actually run: each chunk (with its margin) is tiled on its own.
    margin = chunk_margin(tile, 0.25)
    tiles = sum(
        count_tiles(c.read[2], c.read[3], tile, 0.25)
        for c in chunk_windows(side, side, 4096, margin)
    )
    expected = tiles / batch * batch_time
    queue.put(
        {
            "scene": f"{side}x{side}",
            "tiles": tiles,
            "seconds": seconds,
            "tiles_x_batch_time_s": expected,
            "overhead": seconds / expected - 1,
            "peak_rss_mb": peak_rss_mb(),
        }
    )


def bench_tiling(
    sides=(2048, 8192, 16384), tile: int = 512, batch: int = 4
) -> list[dict[str, Any]]:
    rows = []
    for side in sides:
        folder = Path(tempfile.mkdtemp())
        scene = folder / "scene.tif"
        _write_scene(scene, side)
        rows.append(in_subprocess(_tiling_worker, str(scene), tile, batch))
        shutil.rmtree(folder, ignore_errors=True)
    return rows
