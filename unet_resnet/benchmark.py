"""``unet-resnet benchmark``: speed figures measured as ratios inside one run.

Shared machines are noisy, so every figure that matters is a ratio of two measurements taken
minutes apart in the same process: the model's achieved GFLOP/s against a large bf16 matrix
product, the fast path against plain eager fp32, our training step against the guide's plain
loop, the data loader against the training step, tiled prediction against its tile count.
Sections: ``peak``, ``inference``, ``training``, ``data``, ``tiling``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

SECTIONS = ("peak", "inference", "training", "data", "tiling", "serve")


def peak_rss_mb() -> float:
    """This process's peak resident memory. ``VmHWM`` starts afresh at exec, unlike
    ``ru_maxrss``, which a spawned child inherits from the parent that forked it."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timeit(fn: Callable[[], Any], *, reps: int, warmup: int = 1) -> list[float]:
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
    times = _timeit(lambda: a @ b, reps=reps)
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


def _stats(times: list[float], batch: int, gflop: float, peak: float | None) -> dict[str, float]:
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
        f"fast_{fast.precision}": fast._probs,
    }
    first_call: dict[str, float] = {}
    if compile:
        compiled = Segmenter(model, precision="auto", compile=True)
        start = time.perf_counter()
        compiled._probs(torch.randn(1, 3, sizes[0], sizes[0]))
        first_call["compiled"] = time.perf_counter() - start
        variants[f"compiled_{compiled.precision}"] = compiled._probs
    if onnx:
        try:
            from unet_resnet.checkpoint import CheckpointMeta, save_checkpoint
            from unet_resnet.data import ClassInfo
            from unet_resnet.export import export_model

            tmp = Path(tempfile.mkdtemp())
            save_checkpoint(tmp / "m.pt", model, CheckpointMeta(model.config, ClassInfo.generic(2)))
            export_model(tmp / "m.pt", tmp / "m.onnx")
            ort_seg = Segmenter.from_onnx(tmp / "m.onnx")
            variants["onnxruntime_fp32"] = ort_seg._probs
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
                    times = _timeit(
                        lambda fn=fn, x=x: fn(x), reps=reps if size <= 256 else max(3, reps - 2)
                    )
                row = {
                    "variant": name,
                    "size": size,
                    "batch": batch,
                    "gflop_per_image": gflop,
                    **_stats(times, batch, gflop, peak),
                }
                if name == "eager_fp32":
                    eager_p50 = row["latency_p50_s"]
                row["speedup_vs_eager_fp32"] = eager_p50 / row["latency_p50_s"]
                rows.append(row)
    for row in rows:
        if row["variant"].startswith("compiled"):
            row["first_call_s"] = first_call.get("compiled")
    return rows


def _train_worker(variant: str, size: int, batch: int, steps: int, queue) -> None:
    """One training variant in a fresh process, so its peak memory is its own."""
    import torch.nn.functional as F

    from unet_resnet.models import UNetWithResnet50Encoder

    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(4, encoder_weights=None).train()
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 4, (batch, size, size))
    if variant == "guide_plain_fp32":  # the guide's loop, verbatim
        optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
        autocast = False
    else:  # what SegmentationModule does: channels_last, fused Adam, bf16 autocast
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.001, fused=True)
        autocast = variant.endswith("bf16_mixed")

    def step():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()

    times = _timeit(step, reps=steps)
    peak_mb = peak_rss_mb()
    queue.put(
        {
            "variant": variant,
            "size": size,
            "batch": batch,
            "images_per_s": batch / statistics.median(times),
            "peak_rss_mb": peak_mb,
        }
    )


def _in_subprocess(target, *args) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench_training(size: int = 256, batch: int = 8, steps: int = 3) -> list[dict[str, Any]]:
    """Images/s of fwd+bwd+step: the guide's plain fp32 loop vs our defaults."""
    rows = [
        _in_subprocess(_train_worker, v, size, batch, steps)
        for v in ("guide_plain_fp32", "channels_last_fp32", "channels_last_bf16_mixed")
    ]
    base = rows[0]["images_per_s"]
    for row in rows:
        row["speedup_vs_guide_loop"] = row["images_per_s"] / base
    return rows


def bench_data(size: int = 512, workers: int = 2, n: int = 48, batch: int = 8) -> dict[str, Any]:
    """Loader images/s for the default augmentation preset (decode + augment + collate)."""
    from torch.utils.data import DataLoader

    from unet_resnet.data import SegmentationFolder, build_train_transform, make_demo_dataset
    from unet_resnet.data.datasets import pad_collate

    root = make_demo_dataset(tempfile.mkdtemp(), n, 0, size, seed=0)
    ds = SegmentationFolder(root, "train", transform=build_train_transform("default", size=size))
    loader = DataLoader(
        ds,
        batch_size=batch,
        num_workers=workers,
        collate_fn=pad_collate,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up epoch: worker start-up
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(2):
        for images, _ in loader:
            count += images.shape[0]
    return {
        "size": size,
        "workers": workers,
        "preset": "default",
        "images_per_s": count / (time.perf_counter() - start),
    }


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
    from unet_resnet.inference import Segmenter
    from unet_resnet.inference.tiling import count_tiles
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
    batch_times = _timeit(lambda: seg._probs(x), reps=5)
    start = time.perf_counter()
    seg.predict_file(scene, out, chunk_size=4096)
    seconds = time.perf_counter() - start
    batch_times += _timeit(lambda: seg._probs(x), reps=5, warmup=0)
    batch_time = statistics.median(batch_times)
    # Tiles actually run: each chunk (with its margin) is tiled on its own.
    margin = max(64, int(0.25 * tile))
    tiles = 0
    for top in range(0, side, 4096):
        for left in range(0, side, 4096):
            h = min(side, top + 4096 + margin) - max(0, top - margin)
            w = min(side, left + 4096 + margin) - max(0, left - margin)
            tiles += count_tiles(h, w, tile, 0.25)
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
        rows.append(_in_subprocess(_tiling_worker, str(scene), tile, batch))
        for f in folder.iterdir():
            f.unlink()
    return rows


def bench_serve(*, requests: int = 40, size: int = 256) -> list[dict[str, Any]]:
    """A live server on 127.0.0.1 (2 inference threads, queue of 4): load under its capacity
    (no errors expected) and over it (503s expected, still no errors)."""
    import io
    import socket
    import threading

    import uvicorn
    from PIL import Image

    from unet_resnet.inference import Segmenter
    from unet_resnet.models import UNetWithResnet50Encoder
    from unet_resnet.serve import create_app
    from unet_resnet.serve.loadtest import run_load

    torch.manual_seed(0)
    seg = Segmenter(UNetWithResnet50Encoder(4, encoder_weights=None), precision="auto")
    app = create_app(seg, workers=2, queue_size=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    url = f"http://127.0.0.1:{port}"
    try:
        run_load(url, buffer.getvalue(), requests=4, concurrency=2)  # warm-up
        rows = [
            {
                "load": "within capacity",
                **run_load(url, buffer.getvalue(), requests=requests, concurrency=4),
            },
            {
                "load": "over capacity",
                **run_load(url, buffer.getvalue(), requests=requests, concurrency=16),
            },
        ]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return rows


def run(sections=SECTIONS, *, quick: bool = False, compile: bool = False) -> dict[str, Any]:
    """Run the chosen sections; ``quick`` shrinks them (for smoke tests)."""
    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    peak = None
    if "peak" in sections or "inference" in sections:
        results["peak"] = (
            bench_peak()
            if not quick
            else {"bf16_matmul_tflops": matmul_tflops(torch.bfloat16, 512)}
        )
        peak = results["peak"]["bf16_matmul_tflops"]
    if "inference" in sections:
        results["inference"] = bench_inference(
            peak,
            sizes=(64,) if quick else (256, 512),
            batches=(1,) if quick else (1, 4),
            reps=2 if quick else 5,
            compile=compile,
            onnx=not quick,
        )
    if "training" in sections:
        results["training"] = bench_training(
            size=64 if quick else 256, batch=2 if quick else 8, steps=1 if quick else 3
        )
    if "data" in sections:
        results["data"] = bench_data(size=128 if quick else 512, n=8 if quick else 48)
    if "tiling" in sections:
        results["tiling"] = bench_tiling(
            sides=(1024,) if quick else (2048, 8192, 16384), tile=256 if quick else 512
        )
    if "serve" in sections:
        results["serve"] = bench_serve(requests=8 if quick else 40, size=64 if quick else 256)
    return results


def format_results(results: dict[str, Any]) -> str:
    lines = []
    if "peak" in results:
        p = results["peak"]
        lines.append("Peak: " + ", ".join(f"{k} {v:.2f}" for k, v in p.items()))
    if "inference" in results:
        lines += [
            "",
            "Inference, guide's model (U-Net ResNet-50)",
            f"{'variant':<20}{'size':>6}{'batch':>6}{'img/s':>8}{'p50 s':>8}{'p95 s':>8}"
            f"{'GFLOP/s':>9}{'of peak':>9}{'vs eager':>9}",
        ]
        for r in results["inference"]:
            lines.append(
                f"{r['variant']:<20}{r['size']:>6}{r['batch']:>6}{r['images_per_s']:>8.2f}"
                f"{r['latency_p50_s']:>8.3f}{r['latency_p95_s']:>8.3f}{r['gflops']:>9.0f}"
                f"{r.get('fraction_of_bf16_peak', float('nan')):>9.2f}"
                f"{r['speedup_vs_eager_fp32']:>8.2f}x"
            )
        first = next((r["first_call_s"] for r in results["inference"] if "first_call_s" in r), None)
        if first is not None:
            lines.append(f"compiled: first call (compilation) {first:.1f} s, not in the rows above")
    if "training" in results:
        lines += [
            "",
            "Training step (fwd+bwd+Adam), guide's model",
            f"{'variant':<28}{'size':>6}{'batch':>6}{'img/s':>8}{'vs guide':>10}{'peak MB':>9}",
        ]
        for r in results["training"]:
            lines.append(
                f"{r['variant']:<28}{r['size']:>6}{r['batch']:>6}{r['images_per_s']:>8.2f}"
                f"{r['speedup_vs_guide_loop']:>9.2f}x{r['peak_rss_mb']:>9.0f}"
            )
    if "data" in results:
        d = results["data"]
        lines += [
            "",
            f"Data loader: {d['images_per_s']:.1f} images/s ({d['preset']} preset, "
            f"{d['size']}x{d['size']}, {d['workers']} workers)",
        ]
    if "tiling" in results:
        lines += [
            "",
            "Tiled GeoTIFF prediction (U-Net ResNet-18, tile 512, batch 4)",
            f"{'scene':<14}{'tiles':>7}{'seconds':>9}{'tiles x batch':>15}{'overhead':>10}"
            f"{'peak MB':>9}",
        ]
        for r in results["tiling"]:
            lines.append(
                f"{r['scene']:<14}{r['tiles']:>7}{r['seconds']:>9.1f}"
                f"{r['tiles_x_batch_time_s']:>15.1f}{100 * r['overhead']:>9.1f}%"
                f"{r['peak_rss_mb']:>9.0f}"
            )
    if "serve" in results:
        lines += [
            "",
            "HTTP service under load (guide's model, 2 inference threads, queue 4)",
            f"{'load':<18}{'clients':>8}{'ok':>5}{'503':>5}{'errors':>7}{'req/s':>7}"
            f"{'p50 s':>7}{'p95 s':>7}{'p99 s':>7}",
        ]
        for r in results["serve"]:
            lines.append(
                f"{r['load']:<18}{r['concurrency']:>8}{r['ok']:>5}{r['shed_503']:>5}"
                f"{r['errors']:>7}{r['throughput_per_s']:>7.2f}{r['latency_p50_s']:>7.2f}"
                f"{r['latency_p95_s']:>7.2f}{r['latency_p99_s']:>7.2f}"
            )
    return "\n".join(lines)


def save_results(results: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
