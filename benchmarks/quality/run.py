"""Learning curves on real images: ``unet-resnet train`` defaults vs the plain loop.

``make bench-quality`` or ``python -m benchmarks.quality.run [--budgets 5 15 30]
[--datasets nuclei brain textures]``. Same model (the guide's ResNet-50 U-Net, random init),
same epochs, crop and batch for both; each is scored on the held-out split by the same code
(``unet_resnet.inference.evaluate``) through a Segmenter. For ours, ``best.pt`` (what the
defaults hand the user, chosen on the validation split) and ``last.pt`` are both scored.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import machine_info
from benchmarks.quality.datasets import DATASETS, prepare
from benchmarks.quality.harness import SETTINGS, train_defaults
from benchmarks.quality.plain_loop import train_plain


def _score(segmenter, root: Path) -> float:
    from unet_resnet.data import SegmentationFolder
    from unet_resnet.inference.evaluate import evaluate

    return evaluate(segmenter, SegmentationFolder(root, "val"), progress=False)["miou"]


def _time_to(metrics_csv: Path, target: float) -> tuple[float | None, int | None]:
    """Training seconds (summed epochs) until the validation mIoU first reaches ``target``."""
    total = 0.0
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            total += float(row["seconds"])
            miou = float(row["val_miou"])
            if miou == miou and miou >= target:
                return total, int(row["epoch"]) + 1
    return None, None


def run_case(
    name: str,
    root: Path,
    epochs: int,
    work: Path,
    *,
    encoder: str = "resnet50",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Both loops on one dataset/budget/seed; ``overrides`` are extra ``TrainConfig`` fields
    (a candidate default tried against the plain loop)."""
    from unet_resnet import Segmenter
    from unet_resnet.data import resolve_classes

    crop, batch = SETTINGS[name]
    classes = resolve_classes(root, None)
    model, mean, std, plain_seconds = train_plain(
        root,
        num_classes=classes.num_classes,
        epochs=epochs,
        crop=crop,
        batch_size=batch,
        encoder=encoder,
        seed=seed,
    )
    plain = _score(Segmenter(model, classes=classes, mean=mean, std=std), root)
    out = work / f"{name}_{epochs}_{seed}"
    start = time.perf_counter()
    result = train_defaults(
        name, root, out, epochs=epochs, encoder=encoder, seed=seed, **(overrides or {})
    )
    ours_seconds = time.perf_counter() - start
    best = _score(Segmenter.from_checkpoint(result.best_checkpoint), root)
    last = _score(Segmenter.from_checkpoint(result.last_checkpoint), root)
    reach_s, reach_epoch = _time_to(out / "metrics.csv", plain)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "dataset": name,
        "epochs": epochs,
        "seed": seed,
        "crop": crop,
        "batch": batch,
        "plain_miou": plain,
        "plain_seconds": plain_seconds,
        "ours_best_miou": best,
        "ours_last_miou": last,
        "ours_seconds": ours_seconds,
        "ours_augment": summary["augment"]["chosen"],
        "ours_reaches_plain_after_s": reach_s,
        "ours_reaches_plain_at_epoch": reach_epoch,
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'dataset':<10}{'epochs':>7}{'seed':>5}{'plain mIoU':>11}"
        f"{'ours best':>10}{'ours last':>10}"
        f"{'plain s':>9}{'ours s':>8}  {'augment':<8}{'reaches plain':>16}",
    ]
    for r in rows:
        reach = (
            f"{r['ours_reaches_plain_after_s']:.0f} s (ep {r['ours_reaches_plain_at_epoch']})"
            if r["ours_reaches_plain_after_s"] is not None
            else "not reached"
        )
        lines.append(
            f"{r['dataset']:<10}{r['epochs']:>7}{r.get('seed', 0):>5}{r['plain_miou']:>11.3f}"
            f"{r['ours_best_miou']:>10.3f}{r['ours_last_miou']:>10.3f}"
            f"{r['plain_seconds']:>9.0f}{r['ours_seconds']:>8.0f}"
            f"  {r['ours_augment']:<8}{reach:>16}"
        )
    return "\n".join(lines)


def seed_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread over seeds per dataset and budget: one seed's gap can be noise."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["epochs"]), []).append(r)
    out = []
    for (name, epochs), rs in groups.items():
        plain = [r["plain_miou"] for r in rs]
        best = [r["ours_best_miou"] for r in rs]
        diffs = [b - p for b, p in zip(best, plain, strict=True)]
        out.append(
            {
                "dataset": name,
                "epochs": epochs,
                "seeds": len(rs),
                "plain_mean": statistics.fmean(plain),
                "ours_best_mean": statistics.fmean(best),
                "gap_mean": statistics.fmean(diffs),
                "gap_min": min(diffs),
                "gap_max": max(diffs),
            }
        )
    return out


def format_means(means: list[dict[str, Any]]) -> str:
    lines = [f"{'dataset':<10}{'epochs':>7}{'seeds':>6}{'plain':>8}{'ours':>8}{'ours-plain':>12}"]
    for m in means:
        lines.append(
            f"{m['dataset']:<10}{m['epochs']:>7}{m['seeds']:>6}{m['plain_mean']:>8.3f}"
            f"{m['ours_best_mean']:>8.3f}{m['gap_mean']:>+12.3f}"
            f"  (min {m['gap_min']:+.3f}, max {m['gap_max']:+.3f})"
        )
    return "\n".join(lines)


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set expects FIELD=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.run", description=__doc__)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--budgets", nargs="+", type=int, default=[5, 15, 30])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="FIELD=VALUE",
        help="a TrainConfig field for our side (a candidate default), repeatable",
    )
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "unet-resnet" / "wheels"))
    parser.add_argument("--json", dest="json_out", default="benchmarks/results/quality.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    rows = []
    info = machine_info()
    print(f"CPU: {info['cpu']['model']}; flags: {' '.join(info['cpu']['flags'])}", flush=True)
    try:
        for name in args.datasets:
            root = prepare(name, work / "data" / name, Path(args.cache))
            for epochs in args.budgets:
                for seed in args.seeds:
                    rows.append(
                        run_case(
                            name, root, epochs, work, seed=seed, overrides=dict(args.overrides)
                        )
                    )
                    print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the runs' checkpoints are GBs
    print()
    print(format_rows(rows))
    means = seed_means(rows)
    if len(args.seeds) > 1:
        print()
        print(format_means(means))
    path = Path(args.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"machine": info, "overrides": dict(args.overrides), "rows": rows, "means": means},
            indent=2,
        )
        + "\n"
    )
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
