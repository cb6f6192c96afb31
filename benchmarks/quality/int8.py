"""int8 on real images: how much the OpenVINO int8 export loses against the float model.

``python -m benchmarks.quality.int8 [--datasets nuclei brain textures] [--epochs 5]``. Per
dataset: one ``unet-resnet train`` run with the defaults (the guide's ResNet-50 U-Net, random
init), then ``unet-resnet export --format openvino --precision int8 --calibration DATA`` as a
user runs it (calibrated on the training split, scored on the validation split, the
``--max-drop`` guard at its default 0.5 points). The row is the export's own report: float
and int8 mIoU, the drop in points, pixel agreement, whether accuracy control was needed and
which layers stayed in float. A guard that refuses the export is a row too (its message).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.quality.harness import main_over_datasets, train_defaults

#: the issue's bar: int8 within half a point of float, and pixel agreement of at least 99%
MAX_DROP_POINTS = 0.5
MIN_AGREEMENT = 0.99
#: what the row takes from the export's report.json
REPORTED = (
    "float_miou", "int8_miou", "drop_points", "pixel_agreement", "accuracy_control",
    "float_layers", "per_class",
)  # fmt: skip


def run_dataset(name: str, root: Path, epochs: int, work: Path, encoder: str) -> dict[str, Any]:
    start = time.perf_counter()
    result = train_defaults(name, root, work / name, epochs=epochs, encoder=encoder)
    row: dict[str, Any] = {
        "dataset": name,
        "epochs": epochs,
        "encoder": encoder,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    out = work / name / "int8"
    command = [
        sys.executable, "-m", "unet_resnet.cli", "export", "--checkpoint",
        str(result.best_checkpoint), "--format", "openvino", "--out", str(out),
        "--precision", "int8", "--calibration", str(root), "--max-drop", str(MAX_DROP_POINTS),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)  # as a user runs it
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {**row, "exported": False, "message": message, "target_met": False}
    report = json.loads((out / "report.json").read_text())
    return {
        **row,
        "exported": True,
        "export_seconds": round(time.perf_counter() - start, 1),
        **{k: report[k] for k in REPORTED},
        "calibration_images": report["calibration"]["images"],
        "validation_images": report["validation"]["images"],
        "target_met": bool(
            report["drop_points"] <= MAX_DROP_POINTS and report["pixel_agreement"] >= MIN_AGREEMENT
        ),
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'dataset':<10} {'float mIoU':>10} {'int8 mIoU':>10} {'drop':>6} {'agreement':>10} "
        f"{'acc. control':>12} {'met':>4}"
    ]
    for r in rows:
        if not r["exported"]:
            lines.append(f"{r['dataset']:<10} refused: {r['message']}")
            continue
        lines.append(
            f"{r['dataset']:<10} {100 * r['float_miou']:10.2f} {100 * r['int8_miou']:10.2f} "
            f"{r['drop_points']:6.2f} {100 * r['pixel_agreement']:9.2f}% "
            f"{'yes' if r['accuracy_control'] else 'no':>12} "
            f"{'yes' if r['target_met'] else 'no':>4}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return main_over_datasets(
        argv, prog="python -m benchmarks.quality.int8", description=__doc__, name="int8-quality",
        run_dataset=run_dataset, format_rows=format_rows,
        max_drop_points=MAX_DROP_POINTS, min_agreement=MIN_AGREEMENT,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
