"""Medical recipe: NIfTI CT-like volumes -> 2D slices -> U-Net (1 channel) -> NIfTI label volumes.

    python examples/medical/run.py --out runs/medical          # the full recipe
    python examples/medical/run.py --out /tmp/medical --quick  # a reduced run (the test suite's)
    python examples/medical/run.py --out runs/medical --epochs 6    # the recipe, fewer epochs

Makes a small synthetic dataset in the real on-disk format (``images/CASE.nii.gz`` and
``labels/CASE.nii.gz`` per split, int16 Hounsfield-like values, anisotropic spacing), then
runs check-data -> train (CT intensity rule, 2.5D context) -> evaluate (per case and
structure: Dice, HD95 in mm, surface Dice; cases.csv) -> predict (NIfTI out, same affine).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/_steps.py
from _steps import run_steps

HERE = Path(__file__).resolve().parent
CLASSES = {
    "names": ["background", "organ", "lesion"],
    "colors": [[0, 0, 0], [80, 160, 255], [255, 60, 60]],
}
SPACING = (0.8, 0.8, 2.5)  # mm: fine in-plane, thick slices, as in clinical CT


def make_case(rng: np.random.Generator, shape: tuple[int, int, int]):
    """A body (soft tissue) with an organ (ellipsoid) holding 0-2 small lesions."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    cx, cy, cz = (np.array(shape) / 2) * rng.uniform(0.9, 1.1, 3)
    body = ((x - cx) / (0.45 * shape[0])) ** 2 + ((y - cy) / (0.4 * shape[1])) ** 2 <= 1
    ox, oy = cx + rng.uniform(-4, 4), cy + rng.uniform(-4, 4)
    organ = (
        ((x - ox) / (0.22 * shape[0])) ** 2
        + ((y - oy) / (0.18 * shape[1])) ** 2
        + ((z - cz) / (0.35 * shape[2])) ** 2
    ) <= 1
    label = np.where(organ, 1, 0).astype(np.uint8)
    hu = np.where(body, 40.0, -1000.0) + np.where(organ, 25.0, 0.0)
    for _ in range(rng.integers(0, 3)):
        inside = np.argwhere(organ)
        lx, ly, lz = inside[rng.integers(len(inside))]
        r = rng.uniform(2.0, 4.0)
        lesion = (((x - lx) / r) ** 2 + ((y - ly) / r) ** 2 + ((z - lz) / (r * 0.4)) ** 2) <= 1
        lesion &= organ
        label[lesion] = 2
        hu[lesion] += 45.0  # hyperdense lesion, a few tens of HU above the organ
    hu += rng.normal(0, 12, shape)
    return hu.astype(np.int16), label


def make_dataset(
    root: Path, *, n_train: int, n_val: int, n_test: int, shape, seed: int = 0
) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    affine = np.diag([*SPACING, 1.0])
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        for folder in ("images", "labels"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = make_case(rng, shape)
            name = f"case_{split}_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), root / split / "images" / name)
            nib.save(nib.Nifti1Image(label, affine), root / split / "labels" / name)
    (root / "classes.json").write_text(json.dumps(CLASSES, indent=2))
    return root


def run(
    out: str | Path, *, quick: bool = False, epochs: int | None = None, random_init: bool = False
) -> dict:
    out = Path(out)
    shape = (48, 48, 8) if quick else (128, 128, 24)
    n = (4, 2, 1) if quick else (24, 6, 4)
    data = make_dataset(out / "data", n_train=n[0], n_val=n[1], n_test=n[2], shape=shape)
    overrides = (
        [
            "--encoder",
            "resnet18",
            "--encoder-weights",
            "none",
            "--epochs",
            "1",
            "--image-size",
            "48",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--progress",
            "false",
        ]
        if quick
        else []
    )
    if epochs is not None:
        overrides += ["--epochs", str(epochs)]
    if random_init:  # no ImageNet weights (offline machines)
        overrides += ["--encoder-weights", "none"]
    steps = [
        ["check-data", str(data), "--dataset", "nifti", "--quiet"],
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
            str(out / "run/checkpoints/best.pt"),
            "--data",
            str(data),
            "--dataset",
            "nifti",
            "--split",
            "val",
            "--hd95",
            "--json",
            str(out / "scores.json"),
            "--out",
            str(out / "evaluation"),
        ],
        [
            "predict",
            "--checkpoint",
            str(out / "run/checkpoints/best.pt"),
            str(data / "test/images"),
            "--out",
            str(out / "predictions"),
        ],
    ]
    run_steps(steps)
    return json.loads((out / "scores.json").read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/medical")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's")
    parser.add_argument("--random-init", action="store_true", help="no ImageNet weights")
    args = parser.parse_args()
    scores = run(args.out, quick=args.quick, epochs=args.epochs, random_init=args.random_init)
    print({k: scores[k] for k in ("miou", "mean_dice", "mean_hd95")})
    for name, entry in scores["per_case"].items():
        print(
            name, {m: round(entry[m]["mean"], 3) for m in ("dice", "hd95", "nsd")}, entry["misses"]
        )
