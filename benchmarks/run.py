"""The benchmark suite: ``make bench`` or ``python -m benchmarks.run`` from the repository root.

Shared machines are noisy, so every figure that matters is a ratio of two measurements taken
minutes apart in the same process: the model's achieved GFLOP/s against a large bf16 matrix
product, the fast path against plain eager fp32, our training step against the guide's plain
loop, the data loader against the training step, tiled prediction against its tile count.

python -m benchmarks.run [--only peak inference isa encoders training profile epoch data tiling
serve scale backends] [--compile] [--quick] [--checkpoint CKPT --data DATA]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import bench_peak, machine_info, matmul_tflops
from benchmarks.report import format_results, save_results

SECTIONS = (
    "peak",
    "inference",
    "isa",
    "encoders",
    "training",
    "profile",
    "epoch",
    "data",
    "tiling",
    "serve",
    "scale",
    "backends",
)


def run(
    sections=SECTIONS,
    *,
    quick: bool = False,
    compile: bool = False,
    checkpoint: str | None = None,
    data: str | None = None,
) -> dict[str, Any]:
    """Run the chosen sections; ``quick`` shrinks them (for smoke tests)."""
    results: dict[str, Any] = {"machine": machine_info()}
    peak = None
    if {"peak", "inference", "encoders", "training"} & set(sections):
        results["peak"] = (
            bench_peak()
            if not quick
            else {"bf16_matmul_tflops": matmul_tflops(torch.bfloat16, 512)}
        )
        peak = results["peak"]["bf16_matmul_tflops"]
    if "inference" in sections:
        from benchmarks.inference import bench_inference

        results["inference"] = bench_inference(
            peak,
            sizes=(64,) if quick else (256, 512),
            batches=(1,) if quick else (1, 4),
            reps=2 if quick else 5,
            compile=compile,
            onnx=not quick,
            **({"models": ("guide",)} if quick else {}),  # quick: the guide's model only
        )
    if "isa" in sections:
        from benchmarks.isa import bench_isa

        results["isa"] = (
            bench_isa(sizes=(64,), reps=1, models=("light_decoder",)) if quick else bench_isa()
        )
    if "encoders" in sections:
        from benchmarks.encoders import bench_encoders

        results["encoders"] = bench_encoders(
            peak,
            encoders=("resnet18", "tu-mobilenetv3_small_050") if quick else None,
            size=64 if quick else 512,
            reps=1 if quick else 3,
        )
    if "training" in sections:
        from benchmarks.training import bench_training

        results["training"] = [
            *bench_training(
                size=64 if quick else 256,
                batch=2 if quick else 8,
                steps=1 if quick else 5,
                peak=peak,
            ),
            *(
                []
                if quick
                else bench_training(
                    size=512,
                    batch=4,
                    steps=3,
                    peak=peak,
                    variants=(
                        "guide_plain_fp32",
                        "channels_last_bf16_mixed",
                        "default_bf16_mixed",
                    ),
                )
            ),
        ]
    if "profile" in sections:
        from benchmarks.step_profile import bench_profile

        results["profile"] = bench_profile(*((64, 2) if quick else (256, 8)))
    if "epoch" in sections:
        from benchmarks.epoch import bench_epoch

        results["epoch"] = (
            bench_epoch(size=32, n_train=16, n_val=4, epochs=2) if quick else bench_epoch()
        )
    if "data" in sections:
        from benchmarks.data import bench_data

        results["data"] = bench_data(size=128 if quick else 512, n=8 if quick else 48)
    if "tiling" in sections:
        from benchmarks.tiling import bench_tiling

        results["tiling"] = bench_tiling(
            sides=(1024,) if quick else (2048, 8192, 16384), tile=256 if quick else 512
        )
    if "serve" in sections:
        from benchmarks.serve import bench_serve

        results["serve"] = bench_serve(requests=8 if quick else 40, size=64 if quick else 256)
    if "scale" in sections:
        from benchmarks.scale import bench_scale

        results["scale"] = bench_scale(n=4 if quick else 48, size=64 if quick else 1024)
    if "backends" in sections:
        from benchmarks.backends import bench_backends

        results["backends"] = bench_backends(
            sizes=(64,) if quick else (256, 512),
            reps=1 if quick else 3,
            checkpoint=checkpoint,
            data=data,
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--json", dest="json_out", default="benchmarks/results/latest.json")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--checkpoint", help="backends: a trained model to score each backend on")
    parser.add_argument("--data", help="backends: the --checkpoint's dataset (folder layout)")
    args = parser.parse_args(argv)
    results = run(
        tuple(args.only),
        quick=args.quick,
        compile=args.compile,
        checkpoint=args.checkpoint,
        data=args.data,
    )
    print(format_results(results))
    save_results(results, args.json_out)
    print(f"\nresults written to {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
