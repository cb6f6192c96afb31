"""Driving recipe: Cityscapes-layout street scenes -> 19-class U-Net -> per-class IoU and overlays.

    python examples/driving/run.py --out runs/driving          # the full recipe
    python examples/driving/run.py --out /tmp/driving --quick  # a reduced run (the test suite's)

Writes synthetic street scenes in Cityscapes' real layout
(``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` and ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``
with Cityscapes label ids, void included), so the same commands run on the real dataset by
pointing ``--data`` at it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/_steps.py
from _steps import run_steps

HERE = Path(__file__).resolve().parent
# Cityscapes label ids and a typical colour for each thing drawn.
SKY, BUILDING, VEGETATION, ROAD, SIDEWALK, CAR, PERSON, POLE, SIGN, VOID = (
    23,
    11,
    21,
    7,
    8,
    26,
    24,
    17,
    20,
    0,
)
LOOK = {
    SKY: (110, 160, 220),
    BUILDING: (120, 110, 100),
    VEGETATION: (60, 120, 40),
    ROAD: (90, 90, 95),
    SIDEWALK: (170, 160, 150),
    CAR: (30, 40, 150),
    PERSON: (200, 60, 60),
    POLE: (150, 150, 150),
    SIGN: (230, 210, 20),
    VOID: (0, 0, 0),
}


def make_scene(rng: np.random.Generator, w: int, h: int):
    labels = Image.new("L", (w, h), SKY)
    draw = ImageDraw.Draw(labels)
    horizon = int(h * rng.uniform(0.4, 0.5))
    x = 0
    while x < w:  # buildings and trees along the horizon
        bw = int(rng.uniform(0.08, 0.2) * w)
        top = int(horizon - rng.uniform(0.1, 0.35) * h)
        draw.rectangle([x, top, x + bw, horizon], fill=int(rng.choice([BUILDING, VEGETATION])))
        x += bw
    draw.rectangle([0, horizon, w, h], fill=SIDEWALK)
    draw.polygon([(w * 0.42, horizon), (w * 0.58, horizon), (w, h), (0, h)], fill=ROAD)
    for _ in range(rng.integers(1, 4)):  # cars on the road
        cy = rng.uniform(horizon + 0.1 * h, h - 0.05 * h)
        size = (cy - horizon) / (h - horizon) * 0.25 * w
        cx = w / 2 + rng.uniform(-0.25, 0.25) * w * (cy - horizon) / (h - horizon)
        draw.rectangle([cx - size, cy - size * 0.6, cx + size, cy], fill=CAR)
    for _ in range(rng.integers(0, 3)):  # people on the sidewalk
        px = rng.choice([rng.uniform(0.02, 0.2), rng.uniform(0.8, 0.98)]) * w
        py = rng.uniform(horizon + 0.15 * h, h - 0.02 * h)
        ph = 0.12 * h
        draw.rectangle([px, py - ph, px + ph * 0.3, py], fill=PERSON)
    px = rng.uniform(0.05, 0.3) * w  # a pole with a sign
    draw.rectangle([px, horizon - 0.3 * h, px + 2, horizon + 0.1 * h], fill=POLE)
    draw.rectangle([px - 4, horizon - 0.32 * h, px + 6, horizon - 0.25 * h], fill=SIGN)
    draw.rectangle([0, h - 3, w, h], fill=VOID)  # the ego-vehicle's bonnet: void
    ids = np.asarray(labels)
    palette = np.zeros((256, 3), np.float32)
    for label_id, colour in LOOK.items():
        palette[label_id] = colour
    image = palette[ids] * rng.uniform(0.7, 1.2) + rng.normal(0, 12, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), ids


def make_dataset(
    root: Path, *, counts: dict[str, int], size: tuple[int, int], seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    cities = {"train": "aachen", "val": "frankfurt", "test": "berlin"}
    for split, count in counts.items():
        city = cities[split]
        for i in range(count):
            image, ids = make_scene(rng, *size)
            stem = f"{city}_{i:06d}_000019"
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    return root


def run(out: str | Path, *, quick: bool = False) -> dict:
    out = Path(out)
    size = (128, 64) if quick else (512, 256)
    counts = {"train": 6, "val": 2, "test": 1} if quick else {"train": 60, "val": 12, "test": 4}
    data = make_dataset(out / "data", counts=counts, size=size)
    overrides = (
        [
            "--encoder",
            "resnet18",
            "--encoder-weights",
            "none",
            "--epochs",
            "1",
            "--image-size",
            "64,128",
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--progress",
            "false",
        ]
        if quick
        else []
    )
    best = str(out / "run/checkpoints/best.pt")
    steps = [
        [
            "train",
            "--config",
            str(HERE / "config.yaml"),
            "--data",
            str(data),
            "--out",
            str(out / "run"),
            *overrides,
        ],
        [
            "evaluate",
            "--checkpoint",
            best,
            "--data",
            str(data),
            "--dataset",
            "cityscapes",
            "--split",
            "val",
            "--json",
            str(out / "scores.json"),
            "--out",
            str(out / "evaluation"),
        ],
        [
            "predict",
            "--checkpoint",
            best,
            str(data / "leftImg8bit/test/berlin"),
            "--out",
            str(out / "predictions"),
            "--overlay",
        ],
    ]
    run_steps(steps)
    return json.loads((out / "scores.json").read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/driving")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(
        json.dumps(
            {k: v["iou"] for k, v in run(args.out, quick=args.quick)["per_class"].items()}, indent=1
        )
    )
