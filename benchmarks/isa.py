"""CPU classes: the default inference path against plain PyTorch on every class one machine
can show.

``ONEDNN_MAX_CPU_ISA`` caps the instructions oneDNN may use, so a CPU can behave like the
classes below its own: an Intel CPU with AMX as an AVX-512 BF16 CPU without AMX (the AMD
EPYCs many users have), as an AVX-512 CPU without bf16 and as an AVX2-only one. The cap is
read once, when oneDNN starts, so each class runs in a process of its own, with an empty
fast-path cache (the calibration runs as on a user's first build, and its time is reported).

Per class, model and size (batch 1): eager fp32, ``torch.autocast(bf16)`` + channels_last
where the class runs bf16 natively, and the Segmenter's default path; ``vs plain`` is the
default path's speed over the faster of the two (target: at least 1 on every class). The
fraction of peak is against the class's own bf16 matmul peak where it has native bf16, its
fp32 peak otherwise (without native bf16 oneDNN's bf16 runs reference kernels: minutes).

``python -m benchmarks.run --only isa``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: class name -> ``ONEDNN_MAX_CPU_ISA`` (None: the CPU as it is), most capable first.
CLASSES: dict[str, str | None] = {
    "native": None,
    "avx512_bf16 (no AMX)": "AVX512_CORE_BF16",
    "avx512 (no bf16)": "AVX512_CORE",
    "avx2": "AVX2",
}
#: The CPU flag a class needs beyond the one below it: a cap at or above what the CPU has
#: changes nothing, so that class is the native one and is not run twice.
_ABOVE = {"avx512_bf16 (no AMX)": "amx_tile", "avx512 (no bf16)": "avx512_bf16", "avx2": "avx512f"}
ROOT = Path(__file__).resolve().parents[1]


def classes_below(flags: list[str]) -> list[str]:
    """The classes this CPU can show: itself, and every capped class it is above."""
    return ["native", *(name for name, flag in _ABOVE.items() if flag in flags)]


def _worker(sizes: tuple[int, ...], reps: int, models: tuple[str, ...], out: Path) -> None:
    """One class (the cap is in this process's environment): peak, then the inference rows."""
    import torch

    from benchmarks.common import matmul_tflops
    from benchmarks.inference import bench_inference
    from unet_resnet.hardware import cpu_has_fast_bf16

    bf16 = cpu_has_fast_bf16()
    peak_dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_tflops(peak_dtype, 2048 if sizes[0] >= 256 else 512)
    start = time.perf_counter()
    rows = bench_inference(peak, sizes=sizes, batches=(1,), reps=reps, onnx=False, models=models)
    out.write_text(
        json.dumps(
            {
                "peak_tflops": peak,
                "peak_dtype": "bf16" if bf16 else "fp32",
                "seconds": time.perf_counter() - start,
                "rows": rows,
            }
        )
    )


def bench_isa(
    *,
    sizes: tuple[int, ...] = (256, 512),
    reps: int = 3,
    models: tuple[str, ...] = ("guide", "light_decoder"),
) -> list[dict[str, Any]]:
    """Rows of :func:`benchmarks.inference.bench_inference` per CPU class, each tagged with
    ``cpu_class``, ``onednn_max_cpu_isa``, ``peak_dtype`` and ``peak_tflops``."""
    from benchmarks.common import cpu_info

    rows: list[dict[str, Any]] = []
    for name in classes_below(cpu_info()["flags"]):
        cap = CLASSES[name]
        with tempfile.TemporaryDirectory(prefix="bench-isa-") as tmp:
            env = {**os.environ, "UNET_RESNET_CACHE": tmp}  # calibrate as a first build does
            env.pop("ONEDNN_MAX_CPU_ISA", None)
            if cap:
                env["ONEDNN_MAX_CPU_ISA"] = cap
            out = Path(tmp) / "rows.json"
            args = [",".join(map(str, sizes)), str(reps), ",".join(models), str(out)]
            subprocess.run(
                [sys.executable, "-m", "benchmarks.isa", *args], cwd=ROOT, env=env, check=True
            )
            result = json.loads(out.read_text())
        for row in result["rows"]:
            row.update(
                cpu_class=name,
                onednn_max_cpu_isa=cap,
                peak_dtype=result["peak_dtype"],
                peak_tflops=result["peak_tflops"],
            )
            rows.append(row)
    return rows


if __name__ == "__main__":  # the worker: python -m benchmarks.isa SIZES REPS MODELS OUT
    sizes, reps, models, out = sys.argv[1:]
    _worker(tuple(int(s) for s in sizes.split(",")), int(reps), tuple(models.split(",")), Path(out))
