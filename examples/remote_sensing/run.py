"""Remote-sensing recipe: multi-band GeoTIFF scenes -> windows -> U-Net -> GeoTIFF + GeoJSON.

    python examples/remote_sensing/run.py --out runs/remote          # the full recipe
    python examples/remote_sensing/run.py --out /tmp/remote --quick  # reduced (the tests')
    python examples/remote_sensing/run.py --out runs/remote-vec --vector-labels

Writes synthetic 4-band (blue, green, red, near-infrared) 16-bit GeoTIFF scenes in UTM with
label rasters (background, building, water, vegetation), trains on random windows read
lazily from the scenes, predicts a whole held-out scene tile by tile into a georeferenced
GeoTIFF, and vectorises the buildings and water into GeoJSON polygons.

With ``--vector-labels`` the training and validation labels are one GeoPackage of polygons
(as a GIS or OpenStreetMap export gives them) instead of label rasters: ``--labels FILE
--label-field name`` rasterises them per window while training.
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
CLASSES = {
    "names": ["background", "building", "water", "vegetation"],
    "colors": [[0, 0, 0], [230, 60, 60], [40, 110, 230], [60, 180, 60]],
}
# Typical surface reflectance x 10000 for B, G, R, NIR.
REFLECTANCE = {
    0: (900, 1100, 1300, 2200),
    1: (1800, 1800, 1900, 2100),
    2: (700, 600, 400, 200),
    3: (400, 700, 500, 3800),
}


def make_scene(rng: np.random.Generator, side: int):
    labels = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(labels)
    for _ in range(rng.integers(2, 5)):  # fields and forest patches
        x, y = rng.uniform(0, side, 2)
        r = rng.uniform(0.08, 0.2) * side
        draw.ellipse([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=3)
    x = rng.uniform(0.2, 0.8) * side  # a river
    draw.line([(x, 0), (x + rng.uniform(-0.2, 0.2) * side, side)], fill=2, width=max(3, side // 25))
    for _ in range(rng.integers(8, 20)):  # buildings: small rectangles
        bx, by = rng.uniform(0, side, 2)
        bw, bh = rng.uniform(0.02, 0.05, 2) * side
        draw.rectangle([bx, by, bx + bw, by + bh], fill=1)
    classes = np.asarray(labels)
    table = np.array([REFLECTANCE[k] for k in range(4)], dtype=np.float32)
    bands = table[classes] * rng.uniform(0.85, 1.15) + rng.normal(0, 120, (side, side, 4))
    return np.clip(np.moveaxis(bands, -1, 0), 0, 10000).astype(np.uint16), classes


def _write(path: Path, array: np.ndarray, *, nodata=None) -> None:
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    array = array if array.ndim == 3 else array[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=array.dtype,
        crs="EPSG:32632",
        transform=from_origin(600000, 5300000, 10, 10),
        nodata=nodata,
        tiled=True,
        compress="deflate",
    ) as dst:
        dst.write(array)


def make_dataset(root: Path, *, counts: dict[str, int], side: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for i in range(count):
            bands, classes = make_scene(rng, side)
            _write(root / split / "images" / f"scene_{i:02d}.tif", bands, nodata=0)
            _write(root / split / "masks" / f"scene_{i:02d}.tif", classes.astype(np.uint8))
    (root / "classes.json").write_text(json.dumps(CLASSES, indent=2))
    return root


def masks_to_vector_labels(data: Path, path: Path, splits=("train", "val")) -> Path:
    """One GeoPackage with every labelled region of ``splits`` as a polygon (attribute
    ``name``), and the label rasters of those splits removed: the labels now exist only as
    vectors, as they do for most GIS users."""
    import pyogrio.raw

    from unet_resnet.data import ClassInfo
    from unet_resnet.inference.vectorize import vectorize_mask

    classes = ClassInfo(CLASSES["names"], CLASSES["colors"])
    first = True
    for split in splits:
        for mask in sorted((data / split / "masks").glob("*.tif")):
            scene_file = path.with_name(f"{mask.stem}_{split}.gpkg")
            vectorize_mask(mask, scene_file.with_suffix(".geojson"), classes, gis_path=scene_file)
            meta, _, geometry, fields = pyogrio.raw.read(scene_file)
            pyogrio.raw.write(
                path, geometry, fields, meta["fields"], geometry_type="MultiPolygon",
                crs=meta["crs"], driver="GPKG", layer="labels", append=not first,
            )  # fmt: skip
            first = False
            scene_file.unlink()
            scene_file.with_suffix(".geojson").unlink()
            mask.unlink()
    return path


def run(out: str | Path, *, quick: bool = False, vector_labels: bool = False) -> dict:
    out = Path(out)
    side = 160 if quick else 1024
    counts = {"train": 2, "val": 1, "test": 1} if quick else {"train": 6, "val": 2, "test": 1}
    data = make_dataset(out / "data", counts=counts, side=side)
    label_flags = []
    if vector_labels:
        labels = masks_to_vector_labels(data, out / "labels.gpkg")
        label_flags = ["--labels", str(labels), "--label-field", "name"]
    overrides = (
        [
            "--encoder",
            "resnet18",
            "--encoder-weights",
            "none",
            "--epochs",
            "1",
            "--image-size",
            "64",
            "--samples-per-epoch",
            "8",
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
    best = str(out / "run/checkpoints/best.pt")
    steps = [
        [
            "check-data",
            str(data),
            "--dataset",
            "raster",
            "--window",
            "128",
            "--quiet",
            *label_flags,
        ],
        [
            "train",
            "--config",
            str(HERE / "config.yaml"),
            "--data",
            str(data),
            "--out",
            str(out / "run"),
            *overrides,
            *label_flags,
        ],
        [
            "predict",
            "--checkpoint",
            best,
            str(data / "test/images"),
            "--out",
            str(out / "predictions"),
            "--tile-size",
            "128" if quick else "512",
            "--vectorize",
        ],
    ]
    run_steps(steps)
    return score_scene(best, data / "test", out)


def score_scene(checkpoint: str, split: Path, out: Path) -> dict:
    """Scores of the whole predicted test scene against its label raster."""
    import rasterio
    import torch

    from unet_resnet.inference.evaluate import write_scores_json
    from unet_resnet.metrics import SegmentationMetrics

    metric = SegmentationMetrics(4, class_names=CLASSES["names"])
    for mask_path in sorted((split / "masks").glob("*.tif")):
        with (
            rasterio.open(mask_path) as truth,
            rasterio.open(out / "predictions" / mask_path.name) as pred,
        ):
            p, t = pred.read(1).astype(np.int64), truth.read(1).astype(np.int64)
        p[p == 255] = 0
        metric.update(torch.from_numpy(p)[None], torch.from_numpy(t)[None])
    scores = metric.compute()
    write_scores_json(scores, out / "scores.json")
    return scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/remote")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vector-labels", action="store_true", help="train from a GeoPackage")
    args = parser.parse_args()
    scores = run(args.out, quick=args.quick, vector_labels=args.vector_labels)
    print({k: round(v["iou"], 3) for k, v in scores["per_class"].items()})
